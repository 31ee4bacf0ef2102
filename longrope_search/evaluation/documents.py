"""Long validation documents for long-context perplexity (LongRoPE's search fitness).

The paper scores a candidate rescale on K documents of at least L' tokens, each truncated to L'.
``load_documents`` returns exactly that: ``k`` token tensors picked deterministically from a seed.

Accepted sources (``iter_raw_documents`` detects the kind from the path):

* a ``.txt`` file, or a folder of ``.txt`` files (one document per file, sorted by name);
* a ``.jsonl`` / ``.json`` lines file, one JSON object per line with the text in ``text_field``;
* a ``.parquet`` file or a folder of them, with a ``text_field`` column or an ``input_ids`` column;
* a folder written by ``datasets.Dataset.save_to_disk`` (``data-*.arrow`` files), read with
  pyarrow directly; its ``input_ids`` column is used when present, else ``text_field``.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from longrope_search.errors import ConfigError

ACCEPTED_KINDS = (
    "a .txt file, a folder of .txt files, a .jsonl/.json lines file, a .parquet file or folder, "
    "or a folder written by datasets.Dataset.save_to_disk"
)
IDS_COLUMN = "input_ids"
PREFIX_CHARS_PER_TOKEN = 8  # tokenize only this many characters per needed token, when we can
PREFIX_MARGIN_TOKENS = 16  # extra tokens so the cut at the end of the prefix cannot matter
_SAFE_CUT = re.compile(r"(?<=\S) ")  # a space right after a non-space: no word spans it

Document = str | list[int]  # a text, or the token ids of a pre-tokenized source


class DocumentError(ConfigError):
    """A document source or selection problem; message is ``"<field>: <problem>. Fix: <fix>"``."""


def _source_error(path: Path, problem: str, fix: str) -> DocumentError:
    return DocumentError("source", f"{path}: {problem}", fix)


def _existing(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise _source_error(path, "does not exist", f"give an existing path: {ACCEPTED_KINDS}")
    return path


# ----------------------------------------------------------------------------- raw documents


def iter_raw_documents(source: str | Path, *, text_field: str = "text") -> Iterator[Document]:
    """Yield the documents of ``source`` in source order: texts, or lists of token ids."""
    path = _existing(source)
    if path.is_dir():
        yield from _iter_folder(path, text_field)
    elif path.suffix.lower() == ".txt":
        yield path.read_text(encoding="utf-8")
    elif path.suffix.lower() in (".jsonl", ".json"):
        yield from _iter_jsonl(path, text_field)
    elif path.suffix.lower() == ".parquet":
        yield from _iter_parquet(path, text_field)
    else:
        raise _source_error(path, "is not a supported kind of file", f"give {ACCEPTED_KINDS}")


def _iter_folder(path: Path, text_field: str) -> Iterator[Document]:
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise _source_error(
            path,
            f"is a datasets.DatasetDict with splits {splits}",
            f"point at one split's subfolder, e.g. {path / (splits or ['validation'])[0]}",
        )
    arrows = sorted(path.glob("data-*.arrow"))
    if arrows or (path / "state.json").exists():
        yield from _iter_saved_dataset(path, arrows, text_field)
        return
    texts = sorted(p for p in path.glob("*.txt") if p.is_file())
    parquets = sorted(p for p in path.glob("*.parquet") if p.is_file())
    if texts and parquets:
        raise _source_error(
            path, "mixes .txt and .parquet files", "put only one kind of file in the folder"
        )
    if not texts and not parquets:
        problem = "has no .txt, .parquet or data-*.arrow files"
        raise _source_error(path, problem, f"give {ACCEPTED_KINDS}")
    for text_path in texts:
        yield text_path.read_text(encoding="utf-8")
    for parquet_path in parquets:
        yield from _iter_parquet(parquet_path, text_field)


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise _source_error(
                    path, f"{where} is not valid JSON ({e})", "write one JSON object per line"
                ) from e
            if not isinstance(record, dict) or text_field not in record:
                raise DocumentError(
                    "text_field",
                    f"{path} {where} has no field {text_field!r}",
                    "give every line that field, or set text_field to the field holding the text",
                )
            if not isinstance(record[text_field], str):
                kind = type(record[text_field]).__name__
                raise DocumentError(
                    "text_field",
                    f"{path} {where}: field {text_field!r} is a {kind}, not a string",
                    "store the document text as a JSON string in that field",
                )
            yield record[text_field]


def _pick_column(path: Path, names: list[str], text_field: str) -> str:
    if text_field in names:
        return text_field
    if IDS_COLUMN in names:
        return IDS_COLUMN
    raise DocumentError(
        "text_field",
        f"{path} has neither a {text_field!r} nor an {IDS_COLUMN!r} column (columns: {names})",
        "set text_field to the column holding the text",
    )


def _iter_column(path: Path, batches: Iterator[pa.RecordBatch], column: str) -> Iterator[Any]:
    row = 0
    for batch in batches:
        for value in batch.column(column).to_pylist():
            if value is None or (column != IDS_COLUMN and not isinstance(value, str)):
                raise DocumentError(
                    "text_field" if column != IDS_COLUMN else "source",
                    f"{path} row {row}: column {column!r} holds {value!r:.40}",
                    "store one text string (or one list of token ids) per row",
                )
            yield value
            row += 1


def _iter_parquet(path: Path, text_field: str) -> Iterator[Document]:
    parquet = pq.ParquetFile(path)
    column = _pick_column(path, parquet.schema_arrow.names, text_field)
    yield from _iter_column(path, parquet.iter_batches(columns=[column]), column)


def _iter_saved_dataset(path: Path, arrows: list[Path], text_field: str) -> Iterator[Document]:
    state_path = path / "state.json"
    if state_path.exists():  # keeps the shard order save_to_disk wrote
        files = json.loads(state_path.read_text(encoding="utf-8")).get("_data_files", [])
        arrows = [path / f["filename"] for f in files] or arrows
    if not arrows:
        raise _source_error(
            path, "has a state.json but no data-*.arrow files", "save the dataset again"
        )
    for arrow_path in arrows:
        with pa.memory_map(str(arrow_path)) as source:
            reader = pa.ipc.open_stream(source)
            # text_field wins for text datasets; input_ids wins when both exist (already tokenized)
            names = reader.schema.names
            column = (
                IDS_COLUMN if IDS_COLUMN in names else _pick_column(arrow_path, names, text_field)
            )
            yield from _iter_column(arrow_path, iter(reader), column)


# ----------------------------------------------------------------------------- tokenized documents


def _check_int(field: str, value: int | None, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DocumentError(field, f"must be an integer >= {minimum}, got {value!r}", fix)


def tokenize_document(text: str, tokenizer: Any, need: int | None = None) -> list[int]:
    """Token ids of ``text``; with ``need``, ids are exact only up to ``need`` tokens.

    For a huge book we tokenize a prefix of about ``PREFIX_CHARS_PER_TOKEN * need`` characters,
    cut just before a space that follows a non-space (so no word is split), and keep it only if
    it yields ``need + PREFIX_MARGIN_TOKENS`` tokens: then its first ``need`` ids equal those of
    the whole text. Otherwise the whole text is tokenized.
    """
    if need is not None:
        cut = _SAFE_CUT.search(text, PREFIX_CHARS_PER_TOKEN * need)
        if cut is not None:
            ids = list(tokenizer(text[: cut.start()])["input_ids"])
            if len(ids) >= need + PREFIX_MARGIN_TOKENS:
                return ids
    return list(tokenizer(text)["input_ids"])


def load_documents(
    source: str | Path,
    tokenizer: Any,
    *,
    min_tokens: int,
    k: int,
    seed: int = 0,
    max_tokens: int | None = None,
    text_field: str = "text",
) -> list[torch.Tensor]:
    """Pick ``k`` documents of at least ``min_tokens`` tokens, each truncated to ``max_tokens``.

    Texts are tokenized with ``tokenizer(text)["input_ids"]`` (default special tokens); token id
    lists from pre-tokenized sources are used as they are. The choice is a seeded permutation of
    the source order: the first ``k`` long-enough documents in that order, returned in that order.
    Returns 1-D ``torch.long`` tensors.
    """
    _check_int("k", k, 1, "ask for at least one document")
    _check_int("min_tokens", min_tokens, 2, "perplexity needs at least 2 tokens per document")
    if max_tokens is not None:
        _check_int("max_tokens", max_tokens, 2, "truncate to at least 2 tokens, or pass None")
    _existing(source)

    raw: list[Document] = list(iter_raw_documents(source, text_field=text_field))
    if not raw:
        raise _source_error(Path(source), "holds no documents", "give a source with documents")
    need = None if max_tokens is None else max(min_tokens, max_tokens)

    picked: list[list[int]] = []
    picked_docs: list[Document] = []
    short_lengths: list[int] = []  # exact: a short text is always tokenized in full
    for index in np.random.default_rng(seed).permutation(len(raw)):
        doc = raw[index]
        ids = tokenize_document(doc, tokenizer, need) if isinstance(doc, str) else list(doc)
        if len(ids) < min_tokens:
            short_lengths.append(len(ids))
            continue
        picked.append(ids)
        picked_docs.append(doc)
        if len(picked) == k:
            break
    else:
        # Picked ids may come from a prefix; exact lengths are only needed on this error path.
        lengths = short_lengths + [
            len(tokenize_document(d, tokenizer)) if isinstance(d, str) else len(d)
            for d in picked_docs
        ]
        longest = sorted(lengths, reverse=True)[:5]
        raise _source_error(
            Path(source),
            f"asked for k={k} documents of at least min_tokens={min_tokens} tokens, but read "
            f"{len(raw)} documents of which {len(picked)} have >= {min_tokens} tokens "
            f"(longest lengths in tokens: {longest})",
            "lower the target length (min_tokens) or k, or give longer documents",
        )

    if max_tokens is not None:
        picked = [ids[:max_tokens] for ids in picked]
    return [torch.tensor(ids, dtype=torch.long) for ids in picked]
