"""The engines a job is searched for, and what each applies to a prompt of a given length.

The search scores λ at L', but users run the exported factors in an inference engine, on
prompts of every length. Engines differ in three ways (REFERENCE.md, "How engines apply factors
in deployment"):

* **n̂** (LongRoPE Eq. 3's unscaled first positions): none implements it; only this package's
  ``apply_factors`` (``python``) does.
* **which factor set a prompt gets**: vLLM fixes the long set for every prompt once
  ``max_model_len`` > L; llama.cpp chooses by the allocated context ``-c``; transformers switches
  per forward by the longest position, and SGLang per batch. Switching inside one sequence
  leaves keys rotated by the short set beside queries rotated by the long one in the KV cache,
  unless the model drops and re-fills the cache at the crossing, which in transformers only the
  Phi-3 family does. So only there may an export carry two different sets.
* **the attention factor**: one for every length (transformers, llama.cpp), or a short and a
  long one (vLLM, SGLang).

:func:`deployed` is the one place that turns (engine, model, factor sets, prompt length) into
the candidate the engine actually applies; the held-out comparison and the exports use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

import numpy as np

from longrope_search.rope import Candidate


class Engine(str, Enum):
    """Where the searched factors will run (the spec's ``deploy``)."""

    TRANSFORMERS = "transformers"
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    PYTHON = "python"  # longrope_search.apply_factors on a transformers model


class ExportFormat(StrEnum):
    """What ``export --format`` writes (the CLI's choices, the API's ``format``)."""

    HF = "hf"  # the rope_parameters block for config.json (or the whole config, patched)
    VLLM = "vllm"  # the rope_scaling override and --max-model-len
    LONGROPE = "longrope"  # the whole record, for apply_factors
    GGUF = "gguf"  # a GGUF model file with the factors (gguf_export)


EXPORT_FORMATS = tuple(f.value for f in ExportFormat)
#: the exports that are JSON documents (export_job); gguf is a model file
JSON_FORMATS = (ExportFormat.HF, ExportFormat.VLLM, ExportFormat.LONGROPE)


@dataclass(frozen=True)
class EngineRules:
    """What an engine does with an export."""

    n_hat: bool  # applies n̂
    refills_cache_for: frozenset[str]  # model types whose KV cache it re-fills at L
    export_format: ExportFormat  # the export it reads
    how: str  # one line for the comparison's header


#: model types whose transformers code drops and re-fills the KV cache at the crossing of L
#: (transformers PR #33129), so that a short and a long factor set never share one cache
PHI3_FAMILY = frozenset({"phi3", "phimoe", "phi4_multimodal"})
NONE: frozenset[str] = frozenset()

ENGINES: dict[Engine, EngineRules] = {
    Engine.TRANSFORMERS: EngineRules(
        False, PHI3_FAMILY, ExportFormat.HF, "transformers: the long factors at every length "
        "(a Phi-3 model: the short ones up to L), one attention factor, no n̂"),
    Engine.VLLM: EngineRules(
        False, NONE, ExportFormat.VLLM, "vLLM: the long factors and long_mscale for every "
        "prompt once max_model_len > L, no n̂"),
    Engine.SGLANG: EngineRules(
        False, NONE, ExportFormat.HF, "SGLang: the long factors at every length (its "
        "per-batch switch would mix rotations in the KV cache), no n̂"),
    Engine.LLAMACPP: EngineRules(
        False, NONE, ExportFormat.GGUF, "llama.cpp: the long factors for a context -c > L, "
        "one attention factor, no n̂"),
    Engine.PYTHON: EngineRules(
        True, NONE, ExportFormat.LONGROPE, "apply_factors: the long factors at every "
        "position from n̂ on"),
}
ENGINE_NAMES = tuple(e.value for e in Engine)
DEFAULT_ENGINE = Engine.TRANSFORMERS
#: which engine reads each export format, for the warning on exports for another engine
FORMAT_ENGINES = {ExportFormat.HF: (Engine.TRANSFORMERS, Engine.SGLANG),
                  ExportFormat.VLLM: (Engine.VLLM,), ExportFormat.GGUF: (Engine.LLAMACPP,),
                  ExportFormat.LONGROPE: (Engine.PYTHON,)}


def applies_n_hat(engine: Engine | str) -> bool:
    return ENGINES[Engine(engine)].n_hat


def two_sets_safe(engine: Engine | str, model_type: str | None) -> bool:
    """Whether an engine can carry a short and a long factor set without mixing rotations in
    one KV cache: transformers on a Phi-3-family model."""
    return model_type in ENGINES[Engine(engine)].refills_cache_for


@dataclass(frozen=True)
class FactorSets:
    """What an export carries: the long candidate (λ, n̂, m) and, where the engine uses one
    safely, the short λ (applied up to L under the long attention factor)."""

    long: Candidate
    short: np.ndarray | None = None


def deployed(engine: Engine | str, sets: FactorSets, length: int, original_length: int,
             name: str = "") -> Candidate:
    """The candidate ``engine`` applies to a prompt of ``length`` tokens, for an export whose
    target is beyond L: the short set at ≤ L only where :func:`two_sets_safe` let the export
    carry one (transformers keeps the one attention factor), else the long set at every length;
    n̂ only where the engine applies it."""
    long = sets.long
    n_hat = long.n_hat if applies_n_hat(engine) else 0
    if sets.short is not None and length <= original_length:
        return Candidate(sets.short, 0, long.attention_factor, name or long.name)
    return Candidate(long.lambdas, n_hat, long.attention_factor, name or long.name)


def default_lengths(original_length: int, target_length: int) -> tuple[int, ...]:
    """Where results are reported by default: L/2, L, 2L, 4L and L' (those up to L')."""
    picks = {original_length // 2, original_length, 2 * original_length, 4 * original_length,
             target_length}
    return tuple(sorted(n for n in picks if 2 <= n <= target_length))
