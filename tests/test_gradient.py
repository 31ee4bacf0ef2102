"""The fitness gradient in λ and m through the frozen embedded model, against finite
differences of the scorer's own perplexity."""

from __future__ import annotations

import numpy as np
import pytest

from longrope_search.defaults import EMBEDDED_MODEL, EMBEDDED_SEARCH_DOCS
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.model import apply_candidates, load_model
from longrope_search.rope import Candidate, seed_candidate

LENGTH = 384


@pytest.fixture(scope="module")
def scorer() -> PerplexityScorer:
    loaded = load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")
    loaded.model.double()  # finite differences need the precision, the angles too
    apply_candidates(loaded.model, seed_candidate("pi", loaded.geometry, 2.0)).double()
    docs = load_documents(EMBEDDED_SEARCH_DOCS, loaded.tokenizer, min_tokens=LENGTH, k=2,
                          max_tokens=LENGTH)
    return PerplexityScorer(loaded.model, loaded.geometry, docs, length=LENGTH, batch_size=1)


@pytest.fixture(scope="module")
def sliding(scorer: PerplexityScorer) -> PerplexityScorer:
    """The same documents read in overlapping windows of 160 tokens every 96."""
    return PerplexityScorer(scorer.model, scorer.geometry, scorer.documents, length=160,
                            mode="sliding", stride=96, batch_size=1)


def mean_nll(scorer: PerplexityScorer, lambdas: np.ndarray, n_hat: int, m: float) -> float:
    return scorer.score([Candidate(lambdas, n_hat, m)])[0].mean_nll


@pytest.mark.parametrize("n_hat", [0, 16])
def test_gradient_matches_finite_differences(scorer: PerplexityScorer, n_hat: int) -> None:
    g = scorer.geometry
    yarn = seed_candidate("yarn", g, 3.0)
    cand = Candidate(yarn.lambdas, n_hat, yarn.attention_factor)
    grad = gradient(scorer, cand)
    assert grad.mean_nll == pytest.approx(scorer.score([cand])[0].mean_nll, rel=1e-6)
    checked = 0
    for i in range(g.num_pairs):
        if abs(grad.lambdas[i]) < 1e-4:
            continue
        # a step that turns the last position's angle by at most 0.05 rad
        h = min(1e-3, 0.05 / (LENGTH * float(g.inv_freq[i]))) * cand.lambdas[i]
        up, down = cand.lambdas.copy(), cand.lambdas.copy()
        up[i] += h
        down[i] -= h
        fd = (mean_nll(scorer, up, n_hat, cand.attention_factor)
              - mean_nll(scorer, down, n_hat, cand.attention_factor)) / (2 * h)
        assert grad.lambdas[i] == pytest.approx(fd, rel=0.03, abs=1e-5), i
        checked += 1
    assert checked >= 5
    h = 1e-4
    fd_m = (mean_nll(scorer, cand.lambdas, n_hat, cand.attention_factor + h)
            - mean_nll(scorer, cand.lambdas, n_hat, cand.attention_factor - h)) / (2 * h)
    assert grad.attention_factor == pytest.approx(fd_m, rel=0.01)


def test_gradient_over_sliding_windows_matches_finite_differences(sliding: PerplexityScorer
                                                                    ) -> None:
    """Each window scores only its new tokens; the gradient is that loss's, window by window."""
    cand = seed_candidate("yarn", sliding.geometry, 3.0)
    grad = gradient(sliding, cand)
    assert grad.mean_nll == pytest.approx(sliding.score([cand])[0].mean_nll, rel=1e-6)
    i = int(np.argmax(np.abs(grad.lambdas)))
    h = 1e-4 * cand.lambdas[i]
    up, down = cand.lambdas.copy(), cand.lambdas.copy()
    up[i] += h
    down[i] -= h
    fd = (mean_nll(sliding, up, 0, cand.attention_factor)
          - mean_nll(sliding, down, 0, cand.attention_factor)) / (2 * h)
    assert grad.lambdas[i] == pytest.approx(fd, rel=0.02)
    assert grad.forward_tokens == 3 * sum(sliding.forward_tokens)


def test_gradient_leaves_the_model_as_it_was(scorer: PerplexityScorer) -> None:
    cand = seed_candidate("ntk", scorer.geometry, 3.0)
    before = scorer.score([cand])[0].nll
    flags = [p.requires_grad for p in scorer.model.parameters()]
    grad = gradient(scorer, cand)
    assert all(p.grad is None for p in scorer.model.parameters())  # weights frozen
    assert [p.requires_grad for p in scorer.model.parameters()] == flags
    assert np.array_equal(scorer.score([cand])[0].nll, before)  # plain buffers again
    assert grad.forward_tokens == 3 * scorer.num_documents * LENGTH  # backward = 2 forwards


def test_a_minibatch_is_every_nth_document_and_the_halves_make_the_whole(scorer: PerplexityScorer
                                                                          ) -> None:
    from longrope_search.errors import ConfigError

    cand = seed_candidate("yarn", scorer.geometry, 3.0)
    whole = gradient(scorer, cand)
    halves = [gradient(scorer.minibatch(i, 2), cand) for i in (0, 1)]
    assert [h.nll[0] for h in halves] == pytest.approx(whole.nll, rel=1e-9)
    # documents of equal length: the whole's gradient is the mean of the halves'
    assert np.mean([h.lambdas for h in halves], axis=0) == pytest.approx(whole.lambdas,
                                                                         rel=1e-6, abs=1e-12)
    assert all(h.forward_tokens == whole.forward_tokens // 2 for h in halves)
    assert scorer.minibatch(0, 1) is scorer and scorer.minibatch(1, 2) is scorer.minibatch(1, 2)
    with pytest.raises(ConfigError, match=r"strategy_options\.minibatches"):
        scorer.minibatch(0, 3)  # 2 documents
