"""The chunked scorer agrees with transformers' own loss, in both modes, batched or not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longrope_search.errors import ConfigError
from longrope_search.evaluation.perplexity import PerplexityScorer, chunked_nll, windows
from longrope_search.model import rescaled
from longrope_search.rope import seed_candidate
from tests.test_patch import ARCHS, S, setup


def docs(n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 97, (length + 7 * i,), generator=g) for i in range(n)]


def hf_loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids[None], labels=ids[None]).loss)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_truncate_matches_transformers_loss(arch: str) -> None:
    model, g = setup(arch)
    documents = docs(3, 90)
    cands = [seed_candidate("yarn", g, S), seed_candidate("pi", g, S).with_(n_hat=4)]
    scorer = PerplexityScorer(model, g, documents, length=80, mode="truncate")
    scorer.chunk_tokens = 37  # force several chunks, across row boundaries
    results = scorer.score(cands)
    for cand, res in zip(cands, results, strict=True):
        with rescaled(model, cand):
            expected = [hf_loss(model, d[:80]) for d in documents]
        np.testing.assert_allclose(res.nll, expected, rtol=1e-5)
        assert res.ppl == pytest.approx(math.exp(np.mean(expected)), rel=1e-5)
        assert list(res.tokens) == [79, 79, 79]


def test_batched_forward_equals_one_candidate_per_forward() -> None:
    model, g = setup("llama")
    cands = [seed_candidate(n, g, S) for n in ("none", "pi", "ntk", "yarn")]
    one = PerplexityScorer(model, g, docs(2, 96), length=96, batch_size=1).score(cands)
    three = PerplexityScorer(model, g, docs(2, 96), length=96, batch_size=3).score(cands)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5)
    assert len({round(r.ppl, 6) for r in one}) == 4  # the candidates really differ


def test_sliding_window_scores_every_token_once() -> None:
    assert list(windows(10, 4, 4)) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert list(windows(10, 6, 2)) == [(0, 6, 6), (2, 8, 2), (4, 10, 2)]
    spans = list(windows(1000, 256, 100))
    assert sum(s for *_, s in spans) == 1000
    assert all(e - b <= 256 for b, e, _ in spans)


def test_sliding_matches_manual_recipe() -> None:
    model, g = setup("qwen2")
    doc = docs(1, 150)[0]
    cand = seed_candidate("ntk", g, S)
    res = PerplexityScorer(model, g, [doc], length=64, mode="sliding", stride=24).score([cand])[0]
    total, count = 0.0, 0
    with rescaled(model, cand), torch.no_grad():
        for begin, end, scored in windows(doc.numel(), 64, 24):
            ids = doc[begin:end][None]
            labels = ids.clone()
            labels[:, : ids.shape[1] - scored] = -100
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    assert res.tokens[0] == count == doc.numel() - 1
    assert res.nll[0] == pytest.approx(total / count, rel=1e-5)


def test_chunked_nll_ignores_masked_positions() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8)
    labels = torch.tensor([[1, 2, -100, 4, 5], [-100, -100, 3, 3, 3]])
    total, count = chunked_nll(hidden, labels, head, chunk_tokens=3)
    full = torch.nn.functional.cross_entropy(head(hidden).transpose(1, 2), labels,
                                             ignore_index=-100, reduction="none").sum(1)
    torch.testing.assert_close(total.float(), full)
    assert count.tolist() == [4, 3]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"mode": "bogus"}, "mode"), ({"length": 500}, "documents"),
     ({"mode": "sliding", "stride": 0}, "stride"), ({"batch_size": 0}, "batch_size")],
)
def test_scorer_refuses_bad_settings(kwargs: dict, field: str) -> None:
    model, g = setup("llama")
    args = {"length": 64, **kwargs}
    with pytest.raises(ConfigError, match=f"^{field}: "):
        PerplexityScorer(model, g, docs(2, 64), **args)


def test_a_model_loaded_with_a_device_map_scores_the_same(embedded) -> None:
    """The device_map path (one replica over several GPUs) on what this machine has: the
    loader takes it, and the scorer gives the same perplexities as a plainly loaded model."""
    from longrope_search.evaluation.documents import load_documents
    from longrope_search.model import load_model

    mapped = load_model(embedded.path, dtype="float32", device="cpu", device_map="auto")
    docs = load_documents(embedded.path / "documents" / "search", embedded.tokenizer,
                          min_tokens=256, k=2, max_tokens=256)
    yarn = seed_candidate("yarn", embedded.geometry, 2.0)
    a, b = (PerplexityScorer(m.model, m.geometry, docs, length=256).score([yarn])[0].ppl
            for m in (embedded, mapped))
    assert a == pytest.approx(b, rel=1e-6)
