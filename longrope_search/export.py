"""Export a finished job's factors for inference engines, and apply any export to a model.

One job folder (``job.yaml`` + ``best.json``), three formats:

* ``hf``: the ``rope_parameters`` block transformers 5 reads (``rope_type: longrope``; λ is
  ``long_factor``, since transformers computes ``inv_freq = 1 / (long_factor · b^(2i/d))``), with
  ``max_position_embeddings`` set to the target; or, with ``with_config``, the model's whole
  ``config.json`` patched (drop-in).
* ``vllm``: the ``rope_scaling`` override (``long_mscale`` = m, so vLLM applies the searched
  attention factor) and the matching ``--max-model-len``.
* ``longrope``: the whole record — λ, n̂, m, lengths, model fingerprint, documents, perplexities,
  the seeds' perplexities, search settings, versions.

No inference engine implements n̂ (LongRoPE Eq. 3's unscaled first positions): for n̂ > 0 (a
job searched for ``deploy: python``) the ``hf`` and ``vllm`` exports say so and carry the
perplexity without it. An export never switches factor sets inside one sequence where its engine
would keep keys rotated by the short set beside queries rotated by the long one in the KV cache
(:func:`engine_short_factors`): ``short_factor`` is the long one but for transformers on a
Phi-3-family model. Each export records the engine the job was searched for and the ones it
serves, with a note when they differ (:func:`export_notes`). :func:`apply_factors`
applies any of the three (or any config with a ``longrope`` block) to a loaded transformers
model, n̂ included.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from longrope_search.deploy import (
    DEFAULT_ENGINE,
    FORMAT_ENGINES,
    JSON_FORMATS,
    Engine,
    ExportFormat,
    applies_n_hat,
    two_sets_safe,
)
from longrope_search.errors import ConfigError
from longrope_search.factor_file import load_factor_file
from longrope_search.model import apply_candidates
from longrope_search.model.identity import model_fingerprint, versions
from longrope_search.model.source import ModelSource
from longrope_search.rope import Candidate, RopeGeometry
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir
from longrope_search.search.trial import OK, seed_name

RECORD_FORMAT = "longrope-search/factors"
RECORD_VERSION = 1
N_HAT_NOTE = ("n_hat = {n_hat} was searched, but inference engines (transformers, vLLM, SGLang, "
              "llama.cpp) ignore it and rescale every position; the search documents' perplexity "
              "without it is in ppl_without_n_hat. longrope_search.apply_factors(model, file) "
              "applies n_hat too.")
SHORT_NOTE = ("the short factors were searched under short_attention_factor, but transformers "
              "applies attention_factor to every length")
ONE_SET_NOTE = ("short_factor = long_factor: {engine} would switch factor sets inside a sequence "
                "that crosses L (generation, chunked prefill) and keep keys rotated by one set "
                "beside queries rotated by the other in the KV cache; with one set every length "
                "gets the long factors{dropped}")
ENGINE_NOTE = "searched for deploy: {searched}, exported as {fmt} for {engines}: {verdict}"
SAME_RESULTS = ("both apply the same factors at every length to this model, so the job's "
                "results by length hold")
OTHER_RESULTS = ("they apply the factors differently ({why}), so the job's results by length "
                 "do not describe this export; search with deploy: {engine} for figures that do")
def _factors(values: Any) -> list[float]:
    """λ as plain JSON numbers; rounding drops float noise such as 1.4000000000000001 (λ lie on
    a 0.01 grid, so nothing is lost)."""
    return [round(float(v), 10) for v in values]


# -- reading a job folder ---------------------------------------------------------------------

def _model_config(job_dir: Path) -> tuple[dict[str, Any], Any]:
    """The job's model config as written on disk (for GGUF, as transformers derives it), and as
    transformers reads it."""
    spec = load_job(JobDir(job_dir).spec)
    try:
        source = ModelSource.of(spec.model_path)
    except ConfigError as e:
        raise ConfigError("model", f"the job's model: {e.problem}",
                          "export on a machine where the job's model exists") from None
    return (source.raw_config(spec.trust_remote_code),
            source.config(spec.trust_remote_code))


@dataclass(frozen=True)
class ShortFactors:
    """λ for sequences up to the original length, the attention factor they were searched
    under, and the recovery job they come from (None: ones, and the long job's factor)."""

    factors: list[float]
    attention_factor: float
    job: str | None = None
    note: str | None = None  # why a finished recovery was not attached


def recovery_gain(short_dir: Path) -> tuple[float, float] | None:
    """A recovery job's held-out perplexity against all ones under its attention factor (its
    comparison's ``best`` and ``ones`` rows), or None when it has no such comparison."""
    rows = {r["method"]: r["ppl"] for r in (JobDir(short_dir).read_comparison() or {})
            .get("rows", [])}
    return (rows["best"], rows["ones"]) if {"best", "ones"} <= rows.keys() else None


def short_factors_for(job_dir: Path, best: dict[str, Any],
                      short_dir: Path | None = None) -> ShortFactors:
    """The short factors an export carries: ``short_dir``'s best (a short-factor job), else the
    job's own recovery (a chain's short stage, or the job ``<job>-short`` beside it, see
    ``longrope-search recover``) once it has finished, else ones."""
    ones = ShortFactors([1.0] * len(best["lambdas"]), float(best["attention_factor"]))
    if short_dir is None:
        found = JobDir(job_dir).recovery(best)
        if found.read_best() is None:
            return ones
        gain = recovery_gain(found.path)
        if gain is not None and not gain[0] < gain[1]:
            return ShortFactors(ones.factors, ones.attention_factor, note=(
                f"the short factors of {found.name} are not better than ones on its held-out "
                f"documents ({gain[0]:.4f} against {gain[1]:.4f}), so they are not attached; "
                f"--short-from {found.name} attaches them anyway"))
        short_dir = found.path
    short = JobDir(short_dir).finished_best()
    if short.get("factors", "long") != "short":
        raise ConfigError("short_from", f"job {short_dir.name} searched long factors",
                          f"give a short-factor job: longrope-search recover {job_dir}")
    if len(short["lambdas"]) != len(best["lambdas"]) or \
            short.get("rope_theta") != best.get("rope_theta") or \
            short.get("original_length") != best.get("original_length"):
        raise ConfigError("short_from", f"job {short_dir.name} searched another model "
                          "(number of factors, rope_theta or original length differ)",
                          "use a recovery job of the same model")
    return ShortFactors(_factors(short["lambdas"]), float(short["attention_factor"]),
                        short_dir.name)


def searched_for(best: dict[str, Any]) -> Engine:
    """The engine a job was searched for (jobs from before ``deploy``: the default)."""
    return Engine(best.get("deploy", DEFAULT_ENGINE.value))


def export_notes(best: dict[str, Any], fmt: str) -> list[str]:
    """What a user is told about an export in ``fmt`` for an engine the job was not searched
    for: whether the job's figures still describe it."""
    engines = FORMAT_ENGINES[fmt]
    searched = searched_for(best)
    if searched in engines:
        return []
    why = []
    if best["n_hat"] and applies_n_hat(searched) != applies_n_hat(engines[0]):
        why.append(f"n̂ = {best['n_hat']} is applied by one of them only")
    model_type = best.get("model_type")
    if two_sets_safe(searched, model_type) != two_sets_safe(engines[0], model_type):
        why.append("one of them gives prompts up to L the short factors")
    verdict = (OTHER_RESULTS.format(why="; ".join(why), engine=engines[0].value) if why
               else SAME_RESULTS)
    return [ENGINE_NOTE.format(searched=searched.value, fmt=fmt, verdict=verdict,
                               engines=" or ".join(e.value for e in engines))]


def engine_short_factors(best: dict[str, Any], short: ShortFactors, fmt: str,
                         model_type: str | None) -> tuple[ShortFactors, list[str]]:
    """The short set an export in ``fmt`` may carry, and a note when it is not the searched
    one: a second set only where its engine never mixes rotations in one KV cache
    (:func:`~longrope_search.deploy.two_sets_safe`, transformers on a Phi-3 model), else the
    long factors and attention factor for every length."""
    engine = FORMAT_ENGINES[fmt][0]
    if two_sets_safe(engine, model_type):
        return short, []
    dropped = f"; the recovered short factors of {short.job} are not used" if short.job else ""
    note = ONE_SET_NOTE.format(engine=engine.value, dropped=dropped)
    return ShortFactors(_factors(best["lambdas"]), float(best["attention_factor"])), [note]


def _provenance(best: dict[str, Any], short: ShortFactors, fmt: str,
                notes: list[str]) -> dict[str, Any]:
    """What engines drop, kept beside their keys (``longrope_search`` in config.json)."""
    out: dict[str, Any] = {"job": best.get("job"), "n_hat": best["n_hat"],
                           "search_ppl": best.get("search_ppl"),
                           "target_length": best["target_length"],
                           "searched_for": searched_for(best).value,
                           "exported_for": [e.value for e in FORMAT_ENGINES[fmt]]}
    if best.get("model_fingerprint"):
        out["model_fingerprint"] = best["model_fingerprint"]
    if short.job:
        out["short_factor_from"] = short.job
    if short.attention_factor != best["attention_factor"]:
        out["short_attention_factor"] = short.attention_factor
        out["short_note"] = SHORT_NOTE
    if best["n_hat"]:
        out["note"] = N_HAT_NOTE.format(n_hat=best["n_hat"])
        out["ppl_without_n_hat"] = best.get("search_ppl_without_n_hat")
    notes = [*notes, *export_notes(best, fmt)]
    if notes:
        out["notes"] = notes
    return out


def rope_parameters(best: dict[str, Any], short_factor: list[float],
                    partial_rotary_factor: float | None = None) -> dict[str, Any]:
    """transformers' ``longrope`` block. ``original_max_position_embeddings`` and ``rope_theta``
    are always written: without the first a Llama config silently never uses long_factor, without
    the second ``from_pretrained`` fails (REFERENCE.md, pitfalls)."""
    block = {"rope_type": "longrope", "rope_theta": float(best["rope_theta"]),
             "factor": best["target_length"] / best["original_length"],
             "original_max_position_embeddings": int(best["original_length"]),
             "long_factor": _factors(best["lambdas"]),
             "short_factor": short_factor,
             "attention_factor": float(best["attention_factor"])}
    if partial_rotary_factor not in (None, 1.0):
        block["partial_rotary_factor"] = partial_rotary_factor
    return block


def _partial_rotary_factor(raw: dict[str, Any] | None) -> float | None:
    if raw is None:
        return None
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    return rope.get("partial_rotary_factor", raw.get("partial_rotary_factor"))


def export_job(job_dir: str | Path, fmt: str, *, with_config: bool = False,
               short_factors: str | Path | None = None) -> dict[str, Any]:
    """The export of a finished job in format ``fmt`` (``hf``, ``vllm`` or ``longrope``).

    Args:
        with_config: ``hf`` only: the model's whole ``config.json``, patched.
        short_factors: a short-factor job whose best λ become ``short_factor``; default the
            job's recovery job (``<job>-short``) if it has finished, else ones.
    """
    if fmt not in JSON_FORMATS:
        raise ConfigError("format", f"{fmt!r} is not a JSON export",
                          f"use one of {', '.join(JSON_FORMATS)} (gguf: gguf_export)")
    if with_config and fmt != ExportFormat.HF:
        raise ConfigError("config", f"the {fmt} export is not a config.json: only hf patches "
                          "the model's whole config", "drop --config (config=true), or export "
                          "--format hf --config")
    job_dir = Path(job_dir)
    best = JobDir(job_dir).finished_best()
    searched = short_factors_for(job_dir, best, Path(short_factors) if short_factors else None)
    raw = None
    if with_config or fmt == ExportFormat.LONGROPE or not best.get("model_fingerprint") or \
            not best.get("model_type"):
        raw, config = _model_config(job_dir)
        best.setdefault("model_fingerprint", model_fingerprint(config))
        best["model_type"] = best.get("model_type") or getattr(config, "model_type", None)
    if fmt == ExportFormat.LONGROPE:
        return _record(job_dir, best, searched, raw)
    short, notes = engine_short_factors(best, searched, fmt, best["model_type"])
    notes = [searched.note, *notes] if searched.note else notes
    block = rope_parameters(best, short.factors, _partial_rotary_factor(raw))
    target = int(best["target_length"])
    provenance = _provenance(best, short, fmt, notes)
    if fmt == ExportFormat.HF:
        if not with_config:
            return {"rope_parameters": block, "max_position_embeddings": target,
                    "longrope_search": provenance}
        assert raw is not None
        patched = {k: v for k, v in raw.items() if k != "rope_scaling"}
        patched["rope_parameters"] = block
        patched["max_position_embeddings"] = target
        if "original_max_position_embeddings" in raw:  # Phi-3 keeps it at top level too
            patched["original_max_position_embeddings"] = block["original_max_position_embeddings"]
        patched["longrope_search"] = provenance
        return patched
    scaling = {**block, "type": "longrope", "long_mscale": block["attention_factor"],
               "short_mscale": short.attention_factor}
    # `rope_scaling`, not transformers 5's `rope_parameters`: vLLM before 0.12 reads only the
    # former, and later ones move it to `rope_parameters` themselves (vllm#28542).
    overrides = {"rope_scaling": scaling, "max_position_embeddings": target}
    return {"rope_scaling": scaling, "max_model_len": target, "hf_overrides": overrides,
            "cli_args": f"--max-model-len {target} --hf-overrides '"
                        f"{json.dumps(overrides, separators=(',', ':'))}'",
            "longrope_search": provenance}


def _record(job_dir: Path, best: dict[str, Any], short: ShortFactors,
            raw: dict[str, Any] | None) -> dict[str, Any]:
    files = JobDir(job_dir)
    spec = load_job(files.spec)
    perplexity: dict[str, Any] = {"search": {str(best["target_length"]): best.get("search_ppl")}}
    held = files.read_comparison()
    if held is not None:
        perplexity["heldout"] = {str(best["target_length"]): {
            r["method"]: r["ppl"] for r in held["rows"]}}
    return {
        "format": RECORD_FORMAT, "format_version": RECORD_VERSION,
        "lambdas": _factors(best["lambdas"]), "n_hat": int(best["n_hat"]),
        "attention_factor": float(best["attention_factor"]),
        "short_factor": short.factors, "short_factor_from": short.job,
        "short_attention_factor": short.attention_factor,
        "original_length": best["original_length"], "target_length": best["target_length"],
        "extension_ratio": best["extension_ratio"], "rope_theta": best["rope_theta"],
        "model": {"name": spec.model_path.name, "path": str(spec.model_path),
                  "model_type": (raw or {}).get("model_type"),
                  "config_hash": best["model_fingerprint"]},
        "documents": {"search": str(spec.documents_path), "k": spec.k_documents,
                      "seed": spec.documents_seed, "heldout": str(spec.heldout_path or "") or None},
        "perplexity": perplexity, "search_nll": best.get("search_nll"),
        "search_ppl_without_n_hat": best.get("search_ppl_without_n_hat"),
        "seed_ppl": best.get("seed_ppl") or _seed_ppl_from_tables(job_dir),
        "search": spec.to_dict(), "versions": best.get("versions") or versions(),
    }


def _seed_ppl_from_tables(job_dir: Path) -> dict[str, float]:
    """Seeds' perplexity from generation 0's table (jobs whose best.json predates seed_ppl)."""
    path = JobDir(job_dir).table(0)
    if not path.is_file():
        return {}
    rows = pq.read_table(path, columns=["operator", "status", "ppl"]).to_pylist()
    return {seed_name(r["operator"]): r["ppl"] for r in rows
            if seed_name(r["operator"]) is not None and r["status"] == OK}


# -- applying an export -----------------------------------------------------------------------

def _stated(data: dict[str, Any], key: str) -> Any:
    """A fact an export states, wherever its format keeps it."""
    for where in (data, data.get("longrope_search") or {}, data.get("model") or {}):
        if isinstance(where, dict) and where.get(key) is not None:
            return where[key]
    return None


def apply_factors(model: Any, path: str | Path, *, check_model: bool = True) -> Candidate:
    """Apply an exported factor file to a loaded transformers model, in place, n̂ included.

    Reads any export of this package (``hf``, ``vllm``, ``longrope``), a config with a
    ``longrope`` block, or ``{"lambdas": [...], "n_hat": ..., "attention_factor": ...}``. Every
    position from n̂ on is rotated by θ_i/λ_i and scaled by m (LongRoPE Eq. 3); the model's
    ``max_position_embeddings`` becomes the export's target length.

    Raises:
        ConfigError: malformed file, wrong vector length, non-finite values, or factors searched
            for another model (fingerprint, rope_theta or original length differ); pass
            ``check_model=False`` to apply factors across models deliberately.
    """
    path = Path(path)
    geometry = RopeGeometry.from_config(model.config)
    candidate = load_factor_file(path, geometry)
    data = json.loads(path.read_text())
    if check_model:
        _check_same_model(data, model.config, geometry, path.name)
    apply_candidates(model, candidate, geometry)
    target = _stated(data, "target_length") or data.get("max_position_embeddings")
    if isinstance(target, int) and target > 0:
        model.config.max_position_embeddings = target
    return candidate


def _check_same_model(data: dict[str, Any], config: Any, geometry: RopeGeometry,
                      name: str) -> None:
    field = f"factors ({name})"
    fix = "export factors searched on this model, or pass check_model=False"
    stated = _stated(data, "config_hash") or _stated(data, "model_fingerprint")
    if stated is not None and stated != model_fingerprint(config):
        raise ConfigError(field, f"searched for another model (fingerprint {stated}, this model "
                          f"{model_fingerprint(config)})", fix)
    block = (data.get("rope_parameters") or data.get("rope_scaling") or data)
    theta = block.get("rope_theta", data.get("rope_theta"))
    if theta is not None and not math.isclose(float(theta), geometry.base, rel_tol=1e-9):
        raise ConfigError(field, f"rope_theta {theta} but the model's is {geometry.base}", fix)
    original = block.get("original_max_position_embeddings", data.get("original_length"))
    if original is not None and int(original) != geometry.original_length:
        raise ConfigError(field, f"original length {original} but the model was trained on "
                          f"{geometry.original_length}", fix)
