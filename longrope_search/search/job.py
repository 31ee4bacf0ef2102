"""Job specs: the YAML a user writes, validated up front with errors that name the field."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longrope_search.defaults import EMBEDDED_HELDOUT_DOCS, EMBEDDED_MODEL, EMBEDDED_SEARCH_DOCS
from longrope_search.errors import ConfigError
from longrope_search.search.early_stopping import RULES
from longrope_search.search.evolution import EvolutionConfig
from longrope_search.search.space import N_HAT_CHOICES

STRATEGIES = ("evolution", "tpe", "cmaes", "random")
EMBEDDED = "embedded"
PATH_FIELDS = ("model", "documents", "heldout_documents")  # the spec's paths (seed_files aside)


@dataclass(frozen=True)
class ScoringSpec:
    mode: str = "truncate"
    stride: int = 256
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | str = "auto"


@dataclass(frozen=True)
class SpaceSpec:
    lambda_min: float = 1.0
    lambda_max: float | None = None  # default 1.25·s
    step: float = 0.01
    monotone: str = "non_decreasing"  # or "strict"
    n_hat: tuple[int, ...] = N_HAT_CHOICES
    longrope2: bool = False
    critical_dim: int | None = None  # LongRoPE2: default computed from the model


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """See search/early_stopping.py for the two rules."""

    enabled: bool = True
    rule: str = "bound"  # or "sequential"
    margin: float = 0.02  # bound: nats per token a new candidate may beat a document's best by
    z: float = 4.0  # sequential: how many deviations of the estimate's error to allow


@dataclass(frozen=True)
class JobSpec:
    """One search job. Paths may be ``embedded`` for the bundled default model and documents."""

    name: str
    model: str = EMBEDDED
    documents: str = EMBEDDED
    heldout_documents: str | None = None
    text_field: str = "text"
    original_length: int | None = None  # default: from the model's config
    target_length: int | None = None
    extension_ratio: float | None = None
    k_documents: int = 5
    seed: int = 0
    strategy: str = "evolution"
    attention_factor: str | float = "su"
    seeds: tuple[str, ...] = ("pi", "ntk", "yarn")
    seed_files: tuple[str, ...] = ()
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    space: SpaceSpec = field(default_factory=SpaceSpec)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    results_dir: str = "results"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise ConfigError("name", f"{self.name!r} is not a safe job name",
                              "use letters, digits, '.', '_' and '-' (at most 64)")
        if (self.target_length is None) == (self.extension_ratio is None):
            raise ConfigError("target_length", "give exactly one of target_length and "
                              "extension_ratio", "e.g. extension_ratio: 8")
        if self.extension_ratio is not None and not self.extension_ratio > 1:
            raise ConfigError("extension_ratio", f"must be > 1, got {self.extension_ratio}",
                              "the search extends the context: use e.g. 4 or 8")
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"unknown strategy {self.strategy!r}",
                              f"use one of {STRATEGIES}")
        if self.k_documents < 1:
            raise ConfigError("k_documents", f"must be ≥ 1, got {self.k_documents}",
                              "the paper uses 5 (3 from 512k)")
        if self.space.monotone not in ("non_decreasing", "strict"):
            raise ConfigError("space.monotone", f"unknown value {self.space.monotone!r}",
                              "use non_decreasing or strict")
        es = self.early_stopping
        if es.rule not in RULES:
            raise ConfigError("early_stopping.rule", f"unknown rule {es.rule!r}",
                              f"use one of {RULES}")
        if es.margin < 0:
            raise ConfigError("early_stopping.margin", f"must be ≥ 0, got {es.margin}",
                              "e.g. margin: 0.02 (nats per token)")
        if es.z <= 0:
            raise ConfigError("early_stopping.z", f"must be > 0, got {es.z}",
                              "e.g. z: 4 (see configs/README.md)")
        if self.scoring.mode not in ("truncate", "sliding"):
            raise ConfigError("scoring.mode", f"unknown mode {self.scoring.mode!r}",
                              "use truncate or sliding")

    # -- resolved paths -----------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return EMBEDDED_MODEL if self.model == EMBEDDED else Path(self.model).expanduser()

    @property
    def documents_path(self) -> Path:
        return (EMBEDDED_SEARCH_DOCS if self.documents == EMBEDDED
                else Path(self.documents).expanduser())

    @property
    def heldout_path(self) -> Path | None:
        if self.heldout_documents is None:
            return EMBEDDED_HELDOUT_DOCS if self.documents == EMBEDDED else None
        return (EMBEDDED_HELDOUT_DOCS if self.heldout_documents == EMBEDDED
                else Path(self.heldout_documents).expanduser())

    @property
    def job_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def resolve_lengths(self, original_length: int) -> tuple[int, int, float]:
        """(L, L', s) given the model's original length (unless the spec overrides it)."""
        L = self.original_length or original_length
        if self.target_length is not None:
            if self.target_length <= L:
                raise ConfigError("target_length", f"{self.target_length} is not beyond the "
                                  f"original length {L}", "use a target longer than L")
            return L, self.target_length, self.target_length / L
        assert self.extension_ratio is not None
        return L, round(self.extension_ratio * L), float(self.extension_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(path: str, value: Any, hint: Any) -> Any:
    """Coerce YAML scalars to the field's type, or raise naming the field."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for opt in options:
        base = typing.get_origin(opt) or opt
        if base is tuple and isinstance(value, (list, tuple)):
            (item,) = {a for a in typing.get_args(opt) if a is not Ellipsis}
            return tuple(_check_type(f"{path}[{i}]", v, item) for i, v in enumerate(value))
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool) and isinstance(value, base):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(path, f"expected {names}, got {value!r}", "fix the value in the config")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}",
                          "write key: value pairs")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {sorted(known)}"
        raise ConfigError(f"{prefix}{unknown[0]}", "unknown key", hint)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, hint)
    try:
        return cls(**kwargs)
    except TypeError as e:
        missing = re.findall(r"'(\w+)'", str(e))
        raise ConfigError(f"{prefix}{missing[0] if missing else 'config'}",
                          "required key missing", "add it to the config") from None


def job_from_dict(data: dict[str, Any]) -> JobSpec:
    return _build(JobSpec, data)


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec (nothing expensive happens here)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"{path} does not exist", "give the path of a YAML job spec")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("config", f"{path} is not valid YAML ({e})", "fix the syntax") from None
    return job_from_dict(data or {})
