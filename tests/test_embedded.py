"""The embedded default model: loadable offline, honest held-out documents, the known pattern."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from longrope_search.defaults import EMBEDDED_HELDOUT_DOCS, EMBEDDED_MODEL, EMBEDDED_SEARCH_DOCS
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import seed_candidate

ROOT = Path(__file__).resolve().parents[1]


def _train_script():
    spec = importlib.util.spec_from_file_location("train_embedded",
                                                  ROOT / "scripts" / "train_embedded.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_model_files_and_size() -> None:
    config = json.loads((EMBEDDED_MODEL / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert 128 <= config["max_position_embeddings"] <= 256
    assert (EMBEDDED_MODEL / "model.safetensors").stat().st_size <= 20 * 2**20


def test_auto_tokenizer_reproduces_training_ids() -> None:
    tok = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    text = next(EMBEDDED_HELDOUT_DOCS.glob("*.txt")).read_text()[:5000]
    assert tok(text)["input_ids"] == tok.backend_tokenizer.encode(text).ids


@pytest.mark.parametrize("folder", [EMBEDDED_SEARCH_DOCS, EMBEDDED_HELDOUT_DOCS])
def test_documents_are_long_and_never_trained_on(embedded, folder: Path) -> None:
    train = _train_script()
    files = sorted(folder.glob("*.txt"))
    assert len(files) >= 8
    L = embedded.geometry.original_length
    for f in files:
        text = f.read_text()
        rel = f.stem.replace("__", "/") + ".py"
        assert train.split_of(rel, len(text.encode()), 16_000) == folder.name, f.name
        assert len(embedded.tokenizer(text)["input_ids"]) >= 8 * L, f.name


def test_search_and_heldout_documents_are_disjoint() -> None:
    search = {f.name for f in EMBEDDED_SEARCH_DOCS.glob("*.txt")}
    heldout = {f.name for f in EMBEDDED_HELDOUT_DOCS.glob("*.txt")}
    assert search and heldout and not search & heldout


def test_known_pattern_at_8x(embedded) -> None:
    """Past L plain RoPE degrades; at 8·L NTK and YaRN do clearly better, PI (untuned) worse."""
    g = embedded.geometry
    L = g.original_length
    docs = load_documents(EMBEDDED_HELDOUT_DOCS, embedded.tokenizer, min_tokens=8 * L, k=3,
                          max_tokens=8 * L)
    at_l = PerplexityScorer(embedded.model, g, docs, length=L).score(
        [seed_candidate("none", g, 1.0)])[0].ppl
    ppl = {r.candidate.name: r.ppl for r in PerplexityScorer(
        embedded.model, g, docs, length=8 * L).score(
        [seed_candidate(m, g, 8.0) for m in ("none", "pi", "ntk", "yarn")])}
    assert ppl["none"] > 1.3 * at_l
    assert ppl["pi"] > ppl["none"]
    assert max(ppl["yarn"], ppl["ntk"]) < 0.9 * ppl["none"]
