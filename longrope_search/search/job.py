"""Job specs: the YAML a user writes, validated up front with errors that name the field.

The spec is a tree of pydantic models, so the same checks and the same field descriptions serve
the CLI (``load_job``), the HTTP API (:class:`JobRequest`, shown field by field in
``/openapi.json``) and Python callers (``job_from_dict``). Only cheap checks live here; those
that need the model's config or the documents are in :mod:`longrope_search.search.plan`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, WithJsonSchema, field_validator, model_validator

from longrope_search.defaults import (
    EMBEDDED,
    EMBEDDED_HELDOUT_DOCS,
    EMBEDDED_SEARCH_DOCS,
    RESULTS_DIR,
    model_location,
)
from longrope_search.deploy import DEFAULT_ENGINE, ENGINE_NAMES, applies_n_hat
from longrope_search.dtypes import AttnImplementation, Dtype, canonical_dtype
from longrope_search.errors import ConfigError
from longrope_search.evaluation.modes import NEEDLE, SLIDING, TRUNCATE, ScoringMode
from longrope_search.rope.attention import POLICIES, Policy
from longrope_search.rope.seeds import SEED_NAMES
from longrope_search.search.early_stopping import BOUND, Rule
from longrope_search.search.space import N_HAT_CHOICES
from longrope_search.search.strategies import get_strategy, options_schema, strategy_names
from longrope_search.search.strategies.settings import (
    MAX_EVALUATIONS,
    SearchSettings,
    parse_options,
)
from longrope_search.validation import AtMost, SpecModel, config_error, spec_error

PATH_FIELDS = ("model", "documents", "heldout_documents")  # the spec's paths (seed_files aside)
JOB_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_PATH = 4096
MAX_LENGTH = 1 << 24  # longest target context, in tokens (16M)
MAX_RATIO = 1024
OLD_SEARCH_KEY = "evolution"  # search:'s name up to 0.1.0, read with a warning
# long: λ for contexts beyond L (the search); short: λ for contexts up to L (recovery)
Factors = Literal["long", "short"]
FACTORS: tuple[str, ...] = get_args(Factors)
SeedName = Literal[SEED_NAMES]  # type: ignore[valid-type]
EngineName = Literal[ENGINE_NAMES]  # type: ignore[valid-type]
Length = Annotated[int, Field(ge=2, le=MAX_LENGTH)]
Weight = Annotated[float, Field(ge=0)]
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Positive = Annotated[float, Field(gt=0)]
OneOrMore = Annotated[int, Field(ge=1)]
MAX_TOKENS = 10**15  # forward tokens: a million evaluations of 5 documents at 200k tokens


def _is_number(value: Any) -> bool:
    """An int or a float, not a bool (YAML's true is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ScoringSpec(SpecModel):
    """How a candidate's perplexity is measured."""

    mode: ScoringMode = Field(
        TRUNCATE, description="truncate: one window of L' tokens per document; sliding: "
        "windows of L' tokens every stride tokens; needle: LongRoPE2's needle-driven loss, "
        "only the answers to needles hidden at depths over each document")
    needles: int = Field(4, ge=1, le=16, description="needle mode: needles per document, at "
                         "depths spread evenly")
    stride: int = Field(256, ge=1, description="tokens between sliding windows")
    dtype: Dtype = Field("auto", description="weights' dtype; auto is bf16 on GPUs and on CPUs "
                         "with native bf16, fp32 elsewhere")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,3})?|mps)$",
                        description="auto, cpu, cuda, cuda:N or mps")
    attn_implementation: AttnImplementation = Field(
        "sdpa", description="transformers' attention kernel: sdpa, flash_attention_2 (needs "
        "flash-attn), eager or flex_attention")
    batch_size: Literal["auto"] | OneOrMore = Field(
        "auto", description="candidates per forward pass: auto (1 on CPUs and at long lengths "
        "on GPUs) or a number ≥ 1")
    document_tokens: int | None = Field(
        None, ge=2, le=MAX_LENGTH, description="sliding: tokens read from each document, "
        "scored in windows of L'; default L' (one window)")
    lengths: Annotated[tuple[Length, ...], AtMost(16)] = Field(
        (), description="truncate: a multi-length fitness, each candidate scored on the first "
        "n tokens of the same documents for every n given (each at most L'), its per-document "
        "loss the weighted mean over the lengths; default L' alone")
    weights: Annotated[tuple[Weight, ...], AtMost(16)] = Field(
        (), description="one weight ≥ 0 per entry of lengths; default equal weights")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: Any) -> Any:
        return canonical_dtype(value) if isinstance(value, str) else value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        """One message for both branches of the union."""
        if value == "auto" or (_is_number(value) and isinstance(value, int) and value >= 1):
            return value
        raise spec_error(f"must be auto or an integer ≥ 1, got {value!r}",
                         "use batch_size: auto, or e.g. batch_size: 4")

    @model_validator(mode="after")
    def _needles_need_needle_mode(self) -> ScoringSpec:
        # a recorded job.yaml lists every key, so only a changed count is one the mode ignores
        if self.mode != NEEDLE and self.needles != type(self).model_fields["needles"].default:
            raise spec_error(f"needles is used by mode: needle only; mode is {self.mode}",
                             "add mode: needle, or leave needles out", field="needles")
        return self

    @model_validator(mode="after")
    def _windows_need_sliding(self) -> ScoringSpec:
        if self.document_tokens is not None and self.mode != SLIDING:
            raise spec_error("document_tokens is read in windows: it needs mode: sliding",
                             "add mode: sliding (and a stride), or leave document_tokens out",
                             field="document_tokens")
        return self

    @model_validator(mode="after")
    def _weights_match_lengths(self) -> ScoringSpec:
        if self.lengths and self.mode != TRUNCATE:
            raise spec_error(f"a multi-length fitness truncates each document; mode is "
                             f"{self.mode}", "use mode: truncate, or leave lengths out",
                             field="lengths")
        if len(set(self.lengths)) != len(self.lengths):
            raise spec_error("lists a length twice", "give each length once (weigh it more "
                             "with weights)", field="lengths")
        if self.weights and len(self.weights) != len(self.lengths):
            raise spec_error(f"{len(self.weights)} weights for {len(self.lengths)} lengths",
                             "give one weight per length, or leave weights out (equal)",
                             field="weights")
        if self.weights and not sum(self.weights) > 0:
            raise spec_error("every weight is 0", "give at least one length a weight > 0",
                             field="weights")
        return self

    @property
    def length_weights(self) -> tuple[float, ...]:
        """The weights of ``lengths``, normalised to sum to 1."""
        w = self.weights or (1.0,) * len(self.lengths)
        return tuple(x / sum(w) for x in w)


class SpaceSpec(SpecModel):
    """The search space: λ on a grid, monotone, bounded; n̂ from a set."""

    lambda_min: Positive = Field(1.0, description="smallest λ (1 = no interpolation)")
    lambda_max: Positive | None = Field(None, description="largest λ; default 1.25·s")
    step: Positive = Field(0.01, description="grid step of λ")
    monotone: Literal["non_decreasing", "strict"] = Field(
        "non_decreasing", description="λ must not decrease (or must increase) with frequency "
        "index")
    n_hat: Annotated[tuple[Annotated[int, Field(ge=0)], ...], AtMost(64)] = Field(
        N_HAT_CHOICES, description="choices for n̂, the first positions kept unscaled; with "
        "deploy: python only (no inference engine applies n̂: for the others n̂ is 0)")
    longrope2: bool = Field(False, description="LongRoPE2: dimensions below the critical one "
                            "are searched, those above follow NTK")
    critical_dim: int | None = Field(None, ge=0, description="LongRoPE2's critical dimension; "
                                     "default computed from the model")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> SpaceSpec:
        if self.lambda_max is not None and self.lambda_max <= self.lambda_min:
            raise spec_error(f"lambda_max {self.lambda_max} is not above lambda_min "
                             f"{self.lambda_min}", "raise lambda_max or leave it out (1.25·s)",
                             field="lambda_max")
        return self


class EarlyStoppingSpec(SpecModel):
    """See search/early_stopping.py for the two rules."""

    enabled: bool = Field(True, description="stop scoring candidates that cannot enter the top-k")
    rule: Rule = Field(
        BOUND, description="bound (safe up to the margin) or sequential (a race)")
    margin: float = Field(0.02, ge=0, description="bound: nats per token a new candidate may "
                          "beat a document's best by")
    z: float = Field(4.0, gt=0, description="sequential: deviations of the estimate's error "
                     "to allow")


StrategyOptionsField = Annotated[dict[Annotated[str, Field(max_length=64)],
                                      bool | int | float | str], Field(max_length=32),
                                 WithJsonSchema(options_schema())]


class BudgetSpec(SpecModel):
    """When the search stops: after this many candidates or forward tokens, whichever comes
    first (a strategy may also finish on its own)."""

    evaluations: OneOrMore | None = Field(None, le=MAX_EVALUATIONS, description="candidates "
                                          "to score; default the search settings' budget "
                                          "(evolution, steady and memetic end with generation "
                                          "T however much is left)")
    tokens: OneOrMore | None = Field(None, le=MAX_TOKENS, description="forward tokens to "
                                     "spend, all candidates together; default unlimited")


class StageSpec(SpecModel):
    """One stage of a chained job: a longer target seeded with the previous stage's best, or
    (last) the short-factor recovery of the last long stage."""

    extension_ratio: float | None = Field(None, gt=1, le=MAX_RATIO, description="s of this "
                                          "stage; give this or target_length (long stages)")
    target_length: int | None = Field(None, ge=2, le=MAX_LENGTH, description="L' of this stage")
    factors: Factors = Field("long", description="long: a search at this stage's L'; short: "
                             "the recovery of the last long stage (last stage only)")
    strategy: str | None = Field(None, max_length=128, description="default: the job's")
    strategy_options: StrategyOptionsField | None = Field(
        None, description="default: the job's if the stage keeps the job's strategy, else none")
    budget: BudgetSpec | None = Field(None, description="default: the job's")

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        lengths = (self.target_length is not None) + (self.extension_ratio is not None)
        if self.factors == "short" and lengths:
            raise spec_error("a short stage scores at L: it takes no length",
                             "leave extension_ratio and target_length out", field="factors")
        if self.factors == "long" and lengths != 1:
            raise spec_error("give exactly one of target_length and extension_ratio",
                             "e.g. {extension_ratio: 4}", field="extension_ratio")
        return self

    @property
    def label(self) -> str:
        """How the stage's folder is named: 4x, 8192 or short."""
        if self.factors == "short":
            return "short"
        return f"{self.extension_ratio:g}x" if self.extension_ratio else str(self.target_length)


class StageOf(SpecModel):
    """Set by a chained job on each stage it runs: which chain, which stage, seeded by which."""

    chain: str = Field(pattern=JOB_NAME, description="the chained job's name")
    index: int = Field(ge=0, description="the stage's place in the chain, from 0")
    seeded_from: str | None = Field(None, max_length=128, description="the stage whose best "
                                    "seeds this one")


class _JobFields(SpecModel):
    """The fields a user chooses (all but ``results_dir``); shared by spec and request."""

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, data: Any) -> Any:
        """``evolution:`` is the old name of ``search:`` (it governs every strategy), read with
        a warning until the next release."""
        if not isinstance(data, dict) or OLD_SEARCH_KEY not in data:
            return data
        if "search" in data:
            raise spec_error(f"{OLD_SEARCH_KEY}: is the old name of search:, and both are given",
                             "keep search: only", field=OLD_SEARCH_KEY)
        warnings.warn(f"the job's {OLD_SEARCH_KEY}: block is now called search: (the old name "
                      "is read until the next release)", FutureWarning, stacklevel=2)
        data = dict(data)
        data["search"] = data.pop(OLD_SEARCH_KEY)
        return data

    name: str = Field(pattern=JOB_NAME, description="the job's name and its folder under the "
                      "results folder: up to 64 letters, digits, '.', '_' or '-', starting with "
                      "a letter or digit")
    model: PathText = Field(EMBEDDED, description="Hugging Face model folder, a .gguf file, "
                          "package:NAME/FILE (a file in an installed package), or embedded")
    documents: PathText = Field(EMBEDDED, description="search documents (a .jsonl/.parquet file "
                                "or folder), or embedded")
    heldout_documents: PathText | None = Field(None, description="held-out documents for the "
                                               "final comparison; default embedded's own")
    text_field: str = Field("text", min_length=1, max_length=256,
                            description="the documents' text column")
    factors: Factors = Field(
        "long", description="long: λ for contexts beyond L, the search at L'; short: λ for "
        "contexts up to L, scored at target_length ≤ L (default L) under a fixed attention "
        "factor, the short-context recovery that `longrope-search recover JOB` sets up")
    original_length: int | None = Field(None, ge=2, le=MAX_LENGTH, description="L; default "
                                        "from the model's config (another value is refused "
                                        "unless override_original_length)")
    override_original_length: bool = Field(
        False, description="use original_length although the model's config gives another L "
        "(a config that is wrong about the length the model was trained on)")
    target_length: int | None = Field(None, ge=2, le=MAX_LENGTH, description="L' in tokens; "
                                      "give this or extension_ratio")
    extension_ratio: float | None = Field(None, gt=1, le=MAX_RATIO, description="s = L'/L; "
                                          "give this or target_length")
    k_documents: int = Field(5, ge=1, le=1024, description="documents scored per candidate (the "
                             "paper: 5, 3 from 512k)")
    seed: int = Field(0, ge=0, description="RNG seed of the search strategy")
    documents_seed: int = Field(0, ge=0, description="RNG seed that picks the k documents "
                                "(search and held-out); fixed while the search seed varies")
    strategy: str = Field("evolution", max_length=128, description="search strategy: "
                          f"{', '.join(strategy_names())} or a registered one")
    strategy_options: StrategyOptionsField = Field(
        default_factory=dict, description="the strategy's own settings, checked by its options "
        "schema (one per strategy, below), e.g. gradient: steps, lr (see configs/README.md)")
    attention_factor: Policy | Positive = Field(
        "su", description=f"attention-factor policy ({', '.join(POLICIES)}) or a number m > 0")
    deploy: EngineName = Field(
        DEFAULT_ENGINE.value, description="the engine the factors are searched for: "
        f"{', '.join(ENGINE_NAMES)}. It decides what the search may use (n̂ only for python, "
        "i.e. longrope_search.apply_factors: no inference engine applies it), which factors "
        "the results by length apply at each length, and what the exports carry")
    comparison_lengths: Annotated[tuple[Length, ...], AtMost(16)] = Field(
        (), description="lengths of the held-out comparison, each at most L'; default L/2, L, "
        "2L, 4L and L'")
    seeds: Annotated[tuple[SeedName, ...], AtMost(16)] = Field(
        ("pi", "ntk", "yarn"), description=f"seed methods: {', '.join(SEED_NAMES)}")
    seed_files: Annotated[tuple[PathText, ...], AtMost(64)] = Field(
        (), description="factor files to seed the search with")
    scoring: ScoringSpec = Field(default_factory=ScoringSpec, description=ScoringSpec.__doc__)
    space: SpaceSpec = Field(default_factory=SpaceSpec, description=SpaceSpec.__doc__)
    search: SearchSettings = Field(default_factory=SearchSettings,
                                   description=SearchSettings.__doc__)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec,
                                              description=EarlyStoppingSpec.__doc__)
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description=BudgetSpec.__doc__)
    trust_remote_code: bool = Field(False, description="run the model folder's own code")
    remove_sliding_window: bool = Field(
        False, description="a model whose layers attend only within a sliding window "
        "(Mistral-7B-v0.1, Phi-3-mini-4k) is refused, since at L' it sees only the distances it "
        "was trained on; true removes the window so every layer attends to the whole context, "
        "as long-context variants of such models do")
    stages: Annotated[tuple[StageSpec, ...], AtMost(16)] = Field(
        (), description="a chained job: stages run in order, each long stage seeded with the "
        "previous one's best mapped to its ratio (λ' = 1 + (λ − 1)(s' − 1)/(s − 1)); the job's "
        "own lengths are then left out")
    stage: StageOf | None = Field(None, description="set by a chained job on its stages")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        names = strategy_names()
        if name not in names:
            raise spec_error(f"unknown strategy {name!r}", f"use one of {', '.join(names)}")
        return name

    @field_validator("attention_factor", mode="before")
    @classmethod
    def _policy_or_factor(cls, value: Any) -> Any:
        """One message for both branches of the union."""
        if value in POLICIES or (_is_number(value) and math.isfinite(value) and value > 0):
            return value
        raise spec_error(f"must be one of {', '.join(POLICIES)} or a number > 0, got {value!r}",
                         "use attention_factor: su (LongRoPE's default), yarn, none, or e.g. 1.2")

    @model_validator(mode="after")
    def _options_of_strategy(self) -> _JobFields:
        _check_options(self.strategy, self.strategy_options)
        return self

    @model_validator(mode="after")
    def _n_hat_where_applied(self) -> _JobFields:
        # the default choices (as every recorded job.yaml lists them) mean "n̂ where applied"
        if applies_n_hat(self.deploy) or tuple(self.space.n_hat) == N_HAT_CHOICES:
            return self
        if tuple(self.space.n_hat) != (0,):
            raise spec_error(f"deploy: {self.deploy} applies no n̂ (no inference engine does), "
                             f"but space.n_hat gives choices {list(self.space.n_hat)}",
                             "leave space.n_hat out (n̂ is then 0), or set deploy: python to "
                             "search n̂ for longrope_search.apply_factors", field="space.n_hat")
        return self

    @model_validator(mode="after")
    def _one_length(self) -> _JobFields:
        if self.stages:
            return self._chained()
        if self.factors == "short":
            if self.extension_ratio is not None:
                raise spec_error("a short-factor job scores at target_length ≤ L, not at a "
                                 "ratio", "leave extension_ratio out (target_length defaults "
                                 "to L)", field="extension_ratio")
            return self
        if (self.target_length is None) == (self.extension_ratio is None):
            raise spec_error("give exactly one of target_length and extension_ratio",
                             "e.g. extension_ratio: 8", field="target_length")
        return self

    def _chained(self) -> _JobFields:
        if self.target_length is not None or self.extension_ratio is not None:
            raise spec_error("a chained job gives its lengths per stage",
                             "move extension_ratio (or target_length) into the stages",
                             field="extension_ratio")
        if self.factors != "long" or self.stage is not None:
            raise spec_error("stages chain long searches", "leave factors and stage out",
                             field="stages")
        kinds = [st.factors for st in self.stages]
        if kinds[0] == "short" or "short" in kinds[:-1]:
            raise spec_error("a short stage recovers the long stage before it: it comes last, "
                             "after at least one long stage", "move it to the end",
                             field="stages")
        for i, st in enumerate(self.stages):
            if st.strategy is not None and st.strategy not in strategy_names():
                raise spec_error(f"unknown strategy {st.strategy!r}",
                                 f"use one of {', '.join(strategy_names())}",
                                 field=f"stages[{i}].strategy")
            _check_options(st.strategy or self.strategy, stage_options(self, st),
                           f"stages[{i}].")
        return self


def stage_options(chain: _JobFields, stage: StageSpec) -> dict[str, Any]:
    """A stage's ``strategy_options``: its own, else the chain's where it keeps its strategy."""
    if stage.strategy_options is not None:
        return stage.strategy_options
    same = stage.strategy in (None, chain.strategy)
    return dict(chain.strategy_options) if same else {}


def _check_options(strategy: str, options: dict[str, Any], where: str = "") -> None:
    """The options through the strategy's own schema, as a spec error at ``where``."""
    try:
        parse_options(strategy, get_strategy(strategy).Options, options)
    except ConfigError as e:
        raise spec_error(e.problem, e.fix, field=where + e.field) from None


class JobSpec(_JobFields):
    """One search job. Paths may be ``embedded`` for the bundled default model and documents."""

    results_dir: PathText = Field(str(RESULTS_DIR),
                                  description="folder that holds the job's folder")

    @model_validator(mode="after")
    def _stage_inside_its_chain(self) -> JobSpec:
        if self.stage is not None and Path(self.results_dir).name != "stages":
            raise spec_error("stage is set by a chained job on the stages it runs, in its "
                             "stages folder", "leave stage out; chain jobs with stages:",
                             field="stage")
        return self

    # -- resolved paths -----------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        """Where the model is: ``embedded``, ``package:…`` or a path, resolved."""
        return model_location(self.model)

    @property
    def documents_path(self) -> Path:
        """The folder or file of the search documents."""
        return (EMBEDDED_SEARCH_DOCS if self.documents == EMBEDDED
                else Path(self.documents).expanduser())

    @property
    def heldout_path(self) -> Path | None:
        """The held-out documents, when any (the embedded ones go with the embedded search
        documents)."""
        if self.heldout_documents is None:
            return EMBEDDED_HELDOUT_DOCS if self.documents == EMBEDDED else None
        return (EMBEDDED_HELDOUT_DOCS if self.heldout_documents == EMBEDDED
                else Path(self.heldout_documents).expanduser())

    @property
    def comparison_path(self) -> Path:
        """Where the held-out comparison reads: held-out documents when named, else the search
        documents."""
        return self.heldout_path or self.documents_path

    @property
    def job_dir(self) -> Path:
        """The job's folder: ``results_dir / name`` (its layout is
        :class:`~longrope_search.search.jobdir.JobDir`)."""
        return Path(self.results_dir) / self.name

    @property
    def evaluation_budget(self) -> int:
        """Candidates to score: ``budget.evaluations`` if given, else the search settings'
        budget."""
        if self.budget.evaluations is not None:
            return self.budget.evaluations
        return self.search.budget

    @property
    def n_hat_choices(self) -> tuple[int, ...]:
        """The n̂ the search may choose: ``space.n_hat`` where the engine applies n̂, else 0."""
        return tuple(self.space.n_hat) if applies_n_hat(self.deploy) else (0,)

    def resolve_lengths(self, original_length: int) -> tuple[int, int, float]:
        """(L, L', s) given the model's original length (unless the spec overrides it)."""
        L = self.original_length or original_length
        if self.factors == "short":
            target = self.target_length or L
            if target > L:
                raise ConfigError("target_length", f"{target} is beyond the original length {L}",
                                  "short factors are for lengths up to L: use target_length ≤ "
                                  f"{L}, or leave it out")
            return L, target, 1.0
        if self.target_length is not None:
            if self.target_length <= L:
                raise ConfigError("target_length", f"{self.target_length} is not beyond the "
                                  f"original length {L}", "use a target longer than L")
            return L, self.target_length, self.target_length / L
        assert self.extension_ratio is not None
        return L, round(self.extension_ratio * L), float(self.extension_ratio)

    def with_results_dir(self, path: str | Path) -> JobSpec:
        """The same job, kept under another results folder."""
        return self.model_copy(update={"results_dir": str(path)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML data (lists, not tuples) that ``job_from_dict`` reads back."""
        return self.model_dump(mode="json")


class JobRequest(_JobFields):
    """A job spec sent to the service. ``results_dir`` is accepted and ignored: the server keeps
    every job in its own results folder."""

    @model_validator(mode="before")
    @classmethod
    def _drop_results_dir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stage") is not None:
            raise spec_error("stage is set by a chained job on the stages it runs",
                             "leave stage out; chain jobs with stages:", field="stage")
        if isinstance(data, dict) and "results_dir" in data:
            return {k: v for k, v in data.items() if k != "results_dir"}
        return data


def job_from_dict(data: Any) -> JobSpec:
    """Validate a spec given as data (a YAML file's, a request's); raises :class:`ConfigError`."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise config_error(e, JobSpec) from None


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec (nothing expensive happens here)."""
    path = Path(path)
    fix = "give the path of a YAML job spec (e.g. configs/embedded-8x.yaml)"
    if path.is_dir():
        raise ConfigError("config", f"{path} is a directory", f"{fix}, or <job folder>/job.yaml")
    if not path.is_file():
        raise ConfigError("config", f"{path} does not exist", fix)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("config", f"{path} is not valid YAML ({' '.join(str(e).split())})",
                          "fix the syntax") from None
    if data is None:
        raise ConfigError("config", f"{path} is empty", f"{fix}: at least name and "
                          "extension_ratio")
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} holds a {type(data).__name__}, not a mapping of "
                          "spec keys", fix)
    return job_from_dict(data)
