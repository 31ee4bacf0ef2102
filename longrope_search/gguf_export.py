"""GGUF out: a copy of a GGUF model carrying a finished job's factors the way llama.cpp reads them.

llama.cpp keeps per-pair factors in tensors (gguf 0.19, REFERENCE.md): ``rope_freqs.weight``
(float32, one per rotary pair; θ_i is divided by it) for Llama-family architectures, where one
table serves every length; ``rope_factors_long.weight`` and ``rope_factors_short.weight`` for
Phi-3, chosen once from the configured context. The export writes the factor tensor(s), the
rope-scaling keys (``{arch}.rope.scaling.type = none``, ``.attn_factor`` = m,
``.original_context_length`` = L) and ``{arch}.context_length`` = L'. ``rope.scaling.factor``
is left out on purpose: llama.cpp's default scaling type is linear, and with a factor it would
divide every frequency by s on top of the tables (as llama.cpp's own converter, it writes no
factor beside ``rope_freqs``). Every other key and every tensor is copied as it is, quantized
tensors byte for byte. What the engine will do differently from the search (n̂, a short
table on a one-table architecture) is returned as notes, as the hf export does for n̂.

The output is written to a temporary file and renamed: it is never half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from longrope_search.deploy import ExportFormat
from longrope_search.errors import ConfigError
from longrope_search.export import ShortFactors, export_notes, short_factors_for
from longrope_search.io import atomic_write
from longrope_search.model.source import GGUF_READ_ERRORS, ModelSource
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir

ONE_TABLE, TWO_TABLES = "rope_freqs.weight", ("rope_factors_long.weight",
                                              "rope_factors_short.weight")
TWO_TABLE_ARCHITECTURES = ("phi3",)
NOTES = {
    "n_hat": "n_hat = {n_hat} was searched, but llama.cpp rescales every position; expect the "
             "perplexity without it ({ppl})",
    "short": "this architecture holds one factor table: llama.cpp applies the long factors to "
             "every length, short prompts included; the recovered short factors are not used",
}


def export_gguf(job_dir: str | Path, gguf_in: str | Path | None, gguf_out: str | Path,
                short_factors: str | Path | None = None) -> list[str]:
    """Write ``gguf_out``: ``gguf_in`` (default: the job's model, when it is a GGUF) with the
    job's factors; returns notes on what the engine will do differently from the search."""
    job_dir = Path(job_dir)
    best = JobDir(job_dir).finished_best()
    short = short_factors_for(job_dir, best, Path(short_factors) if short_factors else None)
    reader = _reader(Path(gguf_in) if gguf_in is not None else job_model_gguf(job_dir))
    arch = reader.fields["general.architecture"].contents()
    _check_pairs(reader, arch, len(best["lambdas"]))
    tables = {ONE_TABLE: best["lambdas"]}
    if arch in TWO_TABLE_ARCHITECTURES:
        tables = dict(zip(TWO_TABLES, (best["lambdas"], short.factors), strict=True))
    keys = {f"{arch}.context_length": (int(best["target_length"]), gguf.GGUFValueType.UINT32),
            f"{arch}.rope.scaling.type": ("none", gguf.GGUFValueType.STRING),
            f"{arch}.rope.scaling.attn_factor": (float(best["attention_factor"]),
                                                 gguf.GGUFValueType.FLOAT32),
            f"{arch}.rope.scaling.original_context_length": (int(best["original_length"]),
                                                             gguf.GGUFValueType.UINT32)}
    atomic_write(Path(gguf_out), lambda tmp: _write(reader, arch, keys, tables, tmp))
    return _notes(best, short, arch)


def gguf_notes(job_dir: str | Path, gguf_out: str | Path,
               short_factors: str | Path | None = None) -> list[str]:
    """The notes :func:`export_gguf` returned for an export already written (read from its
    header: cheap, the tensors stay on disk)."""
    best = JobDir(Path(job_dir)).finished_best()
    short = short_factors_for(Path(job_dir), best, Path(short_factors) if short_factors else None)
    arch = _reader(Path(gguf_out)).fields["general.architecture"].contents()
    return _notes(best, short, arch)


def llamacpp_command(best: dict[str, Any], gguf_out: str | Path) -> str:
    """How to run the export in llama.cpp (allocated for L', as the comparison measured it),
    and the YaRN baseline the job was compared with, as llama.cpp flags."""
    target, original = int(best["target_length"]), int(best["original_length"])
    return (f"llama-server -m {gguf_out} -c {target}   (the factors are in the file; the YaRN "
            f"baseline: -m <the original .gguf> -c {target} --rope-scaling yarn --rope-scale "
            f"{target / original:g} --yarn-orig-ctx {original})")


def job_model_gguf(job_dir: Path) -> Path:
    """The job's model file, when the job searched a GGUF model."""
    model = load_job(JobDir(job_dir).spec).model_path
    if not ModelSource(model).is_gguf:
        raise ConfigError("gguf", f"job {job_dir.name} searched a model folder, not a GGUF file",
                          "give the GGUF of that model: export --format gguf --gguf IN.gguf")
    return model


def _reader(path: Path) -> Any:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError("gguf", f"{path} {what}", "give the GGUF file the job's model came "
                          "from")
    try:
        return gguf.GGUFReader(path)
    except GGUF_READ_ERRORS as e:
        raise ConfigError("gguf", f"{path} is not a readable GGUF file ({e})",
                          "give a .gguf model file") from None


def _check_pairs(reader: Any, arch: str, pairs: int) -> None:
    field = reader.fields.get(f"{arch}.rope.dimension_count")
    dims = int(field.contents()) if field is not None else None
    if dims is None:
        raise ConfigError("gguf", f"architecture {arch!r} has no {arch}.rope.dimension_count",
                          "export to the GGUF of a RoPE model")
    if dims // 2 != pairs:
        raise ConfigError("gguf", f"the file's RoPE has {dims // 2} pairs, the job's factors "
                          f"{pairs}", "give the GGUF of the model the job searched")


def _write(reader: Any, arch: str, keys: dict[str, tuple[Any, Any]],
           tables: dict[str, list[float]], path: Path) -> None:
    """The copy: keys (but ours) and tensors (but the factor tables) as they are, then ours."""
    writer = gguf.GGUFWriter(path, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or \
                field.name in keys or field.name in _scale_keys(arch):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for name, (value, kind) in keys.items():
        writer.add_key_value(name, value, kind)
    copied = [t for t in reader.tensors if t.name not in tables and t.name not in TWO_TABLES]
    new = {name: np.asarray(v, dtype=np.float32) for name, v in tables.items()}
    for t in copied:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, data in new.items():
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes,
                               gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in copied:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    for data in new.values():
        writer.write_tensor_data(data)
    writer.close()


def _scale_keys(arch: str) -> tuple[str, ...]:
    """A uniform scale the input may carry; the factors replace it (λ are relative to θ)."""
    return f"{arch}.rope.scaling.factor", f"{arch}.rope.scale_linear"


def _notes(best: dict[str, Any], short: ShortFactors, arch: str) -> list[str]:
    notes = [short.note] if short.note else []
    short_dropped = short.job is not None and arch not in TWO_TABLE_ARCHITECTURES
    if best["n_hat"]:
        notes.append(NOTES["n_hat"].format(n_hat=best["n_hat"],
                                           ppl=best.get("search_ppl_without_n_hat")))
    if short_dropped:
        notes.append(NOTES["short"])
    return [*notes, *export_notes(best, ExportFormat.GGUF)]


__all__ = ["export_gguf", "gguf_notes", "job_model_gguf", "llamacpp_command"]
