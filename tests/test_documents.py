"""Tests for reading long validation documents (longrope_search.evaluation.documents)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from longrope_search.errors import ConfigError
from longrope_search.evaluation import documents
from longrope_search.evaluation.documents import (
    PREFIX_CHARS_PER_TOKEN,
    DocumentError,
    iter_raw_documents,
    load_documents,
    tokenize_document,
)

WORDS = ["the", "cat", "sat", "on", "mat", "rope", "long", "context", "héllo", "wörld", "日本語"]
LONG_WORD = "supercalifragilistic"  # trained into a single 21-character token


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real tiny byte-level BPE tokenizer that prepends a <s> token, like Llama's."""
    lines = [make_text(random.Random(i).randint(3, 15), i) for i in range(300)]
    lines += [f"{LONG_WORD} " * 5] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    bos = [("<s>", tok.token_to_id("<s>"))]
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=bos)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


class SpyTokenizer:
    """Wraps a tokenizer and records the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, text: str):
        self.calls.append(len(text))
        return self.tokenizer(text)


def full_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def write_parquet(path, **columns) -> None:
    pq.write_table(pa.table(columns), path)


# ----------------------------------------------------------------------------- source kinds


def test_txt_folder_sorted_by_name_and_utf8(tmp_path):
    (tmp_path / "b.txt").write_text("second wörld", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first 日本語", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert list(iter_raw_documents(tmp_path)) == ["first 日本語", "second wörld"]


def test_single_txt_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("one héllo book", encoding="utf-8")
    assert list(iter_raw_documents(path)) == ["one héllo book"]
    assert list(iter_raw_documents(str(path))) == ["one héllo book"]


def test_jsonl_with_custom_field_skips_blank_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "a cat", "id": 1}\n\n{"body": "日本語"}\n', encoding="utf-8")
    assert list(iter_raw_documents(path, text_field="body")) == ["a cat", "日本語"]
    as_json = tmp_path / "docs.json"
    as_json.write_text('{"text": "x"}\n', encoding="utf-8")
    assert list(iter_raw_documents(as_json)) == ["x"]


def test_jsonl_missing_field_names_line_and_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text here"}\n', encoding="utf-8")
    with pytest.raises(DocumentError, match=r"^text_field: .*line 2.*'text'.*Fix: "):
        list(iter_raw_documents(path))


def test_jsonl_non_string_field_and_bad_json(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(DocumentError, match=r"^text_field: .*line 1.*list, not a string"):
        list(iter_raw_documents(path))
    path.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DocumentError, match=r"^source: .*line 2 is not valid JSON"):
        list(iter_raw_documents(path))


def test_parquet_text_column_and_folder(tmp_path):
    write_parquet(tmp_path / "0.parquet", text=["a cat", "the mat"], other=[1, 2])
    write_parquet(tmp_path / "1.parquet", text=["rope"], other=[3])
    assert list(iter_raw_documents(tmp_path / "0.parquet")) == ["a cat", "the mat"]
    assert list(iter_raw_documents(tmp_path)) == ["a cat", "the mat", "rope"]


def test_parquet_input_ids_when_text_column_absent(tmp_path):
    path = tmp_path / "ids.parquet"
    write_parquet(path, input_ids=[[1, 2, 3], [4, 5]])
    assert list(iter_raw_documents(path)) == [[1, 2, 3], [4, 5]]


def test_parquet_without_usable_column_names_columns(tmp_path):
    path = tmp_path / "bad.parquet"
    write_parquet(path, body=["x"])
    with pytest.raises(DocumentError, match=r"^text_field: .*'text'.*'input_ids'.*body"):
        list(iter_raw_documents(path))


def test_saved_dataset_input_ids_read_without_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    ids = [[i] * (3 + i) for i in range(7)]
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(tmp_path / "ds", num_shards=2)
    docs = list(iter_raw_documents(tmp_path / "ds"))
    assert docs == ids
    assert all(isinstance(x, int) for doc in docs for x in doc)
    code = (
        "import sys; from longrope_search.evaluation.documents import iter_raw_documents as it; "
        f"n = len(list(it({str(tmp_path / 'ds')!r}))); print(n, 'datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "False"]


def test_saved_dataset_of_text(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["a cat", "日本語"]}).save_to_disk(tmp_path / "ds")
    assert list(iter_raw_documents(tmp_path / "ds")) == ["a cat", "日本語"]


def test_dataset_dict_folder_names_the_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict({"input_ids": [[1, 2]]})
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DocumentError, match=r"^source: .*DatasetDict.*'train', 'validation'"):
        list(iter_raw_documents(tmp_path / "dd"))


def test_unsupported_and_empty_sources(tmp_path):
    csv = tmp_path / "docs.csv"
    csv.write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"^source: .*docs\.csv.*\.txt.*\.jsonl.*\.parquet"):
        list(iter_raw_documents(csv))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocumentError, match=r"^source: .*empty: has no \.txt"):
        list(iter_raw_documents(tmp_path / "empty"))


# ----------------------------------------------------------------------------- load_documents


def test_load_tokenizes_texts_with_special_tokens(tmp_path, tokenizer):
    texts = [make_text(50, seed) for seed in range(3)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text, encoding="utf-8")
    docs = load_documents(tmp_path, tokenizer, min_tokens=2, k=3)
    assert all(d.dtype == torch.long and d.dim() == 1 for d in docs)
    assert sorted(d.tolist() for d in docs) == sorted(full_ids(tokenizer, t) for t in texts)
    assert all(d[0].item() == tokenizer.bos_token_id for d in docs)


def test_min_tokens_filters_short_documents(tmp_path, tokenizer):
    lengths = [5, 50, 8, 60, 3, 70, 40]
    write_parquet(tmp_path / "ids.parquet", input_ids=[[n] * n for n in lengths])
    docs = load_documents(tmp_path / "ids.parquet", tokenizer, min_tokens=40, k=4)
    assert sorted(len(d) for d in docs) == [40, 50, 60, 70]
    docs = load_documents(tmp_path / "ids.parquet", tokenizer, min_tokens=41, k=2)
    assert all(len(d) >= 41 for d in docs)


def test_selection_is_seeded_permutation_of_long_documents(tmp_path, tokenizer):
    n = 40
    lengths = [10 if i % 3 == 0 else 30 for i in range(n)]
    write_parquet(tmp_path / "ids.parquet", input_ids=[[i] * lengths[i] for i in range(n)])
    path = tmp_path / "ids.parquet"

    def picked(seed: int) -> list[int]:
        return [d[0].item() for d in load_documents(path, tokenizer, min_tokens=20, k=5, seed=seed)]

    assert picked(0) == picked(0)
    assert picked(0) != picked(1)
    assert len({tuple(picked(s)) for s in range(5)}) > 1
    order = [i for i in np.random.default_rng(7).permutation(n) if lengths[i] >= 20]
    assert picked(7) == order[:5]


def test_truncation_to_max_tokens(tmp_path, tokenizer):
    texts = [make_text(400, seed) for seed in range(4)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    docs = load_documents(path, tokenizer, min_tokens=100, k=4, max_tokens=100)
    assert [len(d) for d in docs] == [100] * 4
    assert sorted(d.tolist() for d in docs) == sorted(full_ids(tokenizer, t)[:100] for t in texts)
    ids = [[7] * 30, [8] * 50]
    write_parquet(tmp_path / "ids.parquet", input_ids=ids)
    docs = load_documents(tmp_path / "ids.parquet", tokenizer, min_tokens=30, k=2, max_tokens=25)
    assert sorted(d.tolist() for d in docs) == [[7] * 25, [8] * 25]


def test_max_tokens_below_min_tokens_keeps_only_long_documents(tmp_path, tokenizer):
    write_parquet(tmp_path / "ids.parquet", input_ids=[[1] * 10, [2] * 100])
    docs = load_documents(tmp_path / "ids.parquet", tokenizer, min_tokens=50, k=1, max_tokens=5)
    assert [d.tolist() for d in docs] == [[2] * 5]


# ----------------------------------------------------------------------------- prefix shortcut


def test_prefix_shortcut_tokenizes_less_but_gives_identical_ids(tmp_path, tokenizer):
    book = make_text(20_000, seed=1)
    (tmp_path / "book.txt").write_text(book, encoding="utf-8")
    spy = SpyTokenizer(tokenizer)
    (doc,) = load_documents(tmp_path, spy, min_tokens=64, k=1, max_tokens=64)
    assert doc.tolist() == full_ids(tokenizer, book)[:64]
    assert max(spy.calls) < len(book) // 10  # only a prefix was tokenized


def test_prefix_too_short_in_tokens_falls_back_to_whole_text(tokenizer):
    # every LONG_WORD is one token of 21 characters, so the prefix yields too few tokens
    book = f"{LONG_WORD} " * 400 + make_text(300, seed=2)
    need = 100
    assert len(full_ids(tokenizer, book[: PREFIX_CHARS_PER_TOKEN * need])) < need
    spy = SpyTokenizer(tokenizer)
    ids = tokenize_document(book, spy, need)
    assert ids[:need] == full_ids(tokenizer, book)[:need]
    assert spy.calls[-1] == len(book)


@pytest.mark.parametrize(
    "book",
    [
        make_text(3000, seed=3),
        "日本語 🙂 wörld " * 800,  # multibyte: many tokens per character
        ("the" + " " * 37 + "cat\n\n  ") * 300,  # long runs of spaces and newlines
        " " * 5000 + make_text(2000, seed=4),
        "日本語" * 3000,  # no space at all: no safe cut, whole text
        make_text(300, seed=5),  # shorter than the prefix
    ],
)
@pytest.mark.parametrize("need", [16, 100, 500])
def test_prefix_tokenization_matches_full_tokenization(tokenizer, book, need):
    ids = tokenize_document(book, tokenizer, need)
    full = full_ids(tokenizer, book)
    assert len(ids) >= min(need, len(full))
    assert ids[:need] == full[:need]


# ----------------------------------------------------------------------------- errors


def test_argument_errors_name_the_field_before_any_tokenization(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(make_text(100, 0), encoding="utf-8")
    spy = SpyTokenizer(tokenizer)
    cases = [
        (dict(min_tokens=10, k=0), r"^k: .*got 0.*Fix: "),
        (dict(min_tokens=1, k=1), r"^min_tokens: .*>= 2.*got 1"),
        (dict(min_tokens=10, k=1, max_tokens=1), r"^max_tokens: .*got 1"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_documents(tmp_path, spy, **kwargs)
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"^source: .*nope: does not exist\. Fix: "):
        load_documents(missing, spy, min_tokens=10, k=1)
    assert spy.calls == []


def test_empty_source(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"^source: .*holds no documents"):
        load_documents(path, tokenizer, min_tokens=2, k=1)


def test_too_few_long_documents_reports_counts_and_lengths(tmp_path, tokenizer):
    write_parquet(tmp_path / "ids.parquet", input_ids=[[1] * n for n in [5, 120, 7, 9, 130]])
    with pytest.raises(DocumentError) as info:
        load_documents(tmp_path / "ids.parquet", tokenizer, min_tokens=100, k=3)
    message = str(info.value)
    assert message.startswith("source: ")
    assert "k=3" in message and "min_tokens=100" in message
    assert "read 5 documents of which 2 have >= 100 tokens" in message
    assert "[130, 120, 9, 7, 5]" in message
    assert "Fix: lower the target length (min_tokens) or k, or give longer documents" in message


def test_too_few_reports_exact_lengths_even_after_prefix_shortcut(tmp_path, tokenizer):
    long_text, short_text = make_text(3000, seed=6), make_text(20, seed=7)
    (tmp_path / "a.txt").write_text(long_text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(short_text, encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_documents(tmp_path, tokenizer, min_tokens=50, k=2, max_tokens=50)
    lengths = sorted([len(full_ids(tokenizer, t)) for t in (long_text, short_text)], reverse=True)
    assert "read 2 documents of which 1 have >= 50 tokens" in str(info.value)
    assert str(lengths) in str(info.value)


def test_prefix_cut_never_changes_the_first_tokens(tokenizer, monkeypatch):
    # Few characters per needed token put the prefix end right around `need` tokens, where a
    # careless cut (mid-word, no margin) changes the last kept tokens.
    rng = random.Random(0)
    shortcuts = 0
    for chars_per_token in (3, 4, 8):
        monkeypatch.setattr(documents, "PREFIX_CHARS_PER_TOKEN", chars_per_token)
        for _ in range(150):
            words = [rng.choice([LONG_WORD, *WORDS]) for _ in range(rng.randint(50, 300))]
            book = rng.choice(["", " ", "the", "  "]) + rng.choice([" ", "  ", "\n"]).join(words)
            need = rng.randint(4, 200)
            spy = SpyTokenizer(tokenizer)
            ids = tokenize_document(book, spy, need)
            assert ids[:need] == full_ids(tokenizer, book)[:need], (chars_per_token, need, book)
            shortcuts += spy.calls[-1] < len(book)
    assert shortcuts >= 50  # the shortcut was really exercised
