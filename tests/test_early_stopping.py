"""The two pruning rules, as pure functions of earlier generations' per-document NLLs."""

from __future__ import annotations

import numpy as np
import pytest

from longrope_search.search.early_stopping import (
    MIN_CALIBRATION,
    FloorBound,
    SequentialTest,
    floor_bound,
    prune_rule,
    sequential_test,
)
from longrope_search.search.trial import OK, PRUNED, Evaluation


def test_bound_is_over_the_remaining_documents() -> None:
    rule = FloorBound(threshold=2.0, floors=np.array([1.0, 1.0, 1.0, 1.0]))
    assert not rule.should_prune([2.0])  # (2 + 3) / 4 = 1.25
    assert rule.should_prune([4.0, 4.0, 0.5])  # (8.5 + 1) / 4 > 2
    assert not rule.should_prune([9.0, 9.0, 9.0, 9.0])  # complete: never pruned
    evals = [Evaluation(str(i), (1.0 + i, 2.0 + i), OK, 2) for i in range(4)]
    evals.append(Evaluation("p", (0.1,), PRUNED, 2))
    rule = prune_rule(evals, top_k=2, margin=0.5)
    assert isinstance(rule, FloorBound)
    assert rule.threshold == pytest.approx(2.5)
    np.testing.assert_allclose(rule.floors, [0.5, 1.5])
    assert prune_rule(evals, top_k=5, margin=0.5) is None


def population(rng: np.random.Generator, size: int, noise: float,
               offsets: np.ndarray) -> np.ndarray:
    """Candidates × documents: a candidate's quality, plus each document's own difficulty, plus
    noise per (candidate, document)."""
    quality = 3.0 + rng.normal(0, 0.02, size)
    return quality[:, None] + offsets + rng.normal(0, noise, (size, offsets.size))


OFFSETS = np.array([0.8, -0.5, 0.1, -0.6, 0.4, 0.2, -0.3, -0.1])


def test_sequential_test_judges_documents_against_their_own_difficulty() -> None:
    history = population(np.random.default_rng(0), 64, 0.002, OFFSETS)
    rule = sequential_test(history, top_k=32, z=3.0)
    np.testing.assert_allclose(rule.offsets, OFFSETS - OFFSETS.mean(), atol=2e-3)
    # As good as the threshold, but its first document is the hardest: not pruned; the raw
    # partial mean (3.8) is far above the threshold (about 3.0).
    assert not rule.should_prune([rule.threshold + OFFSETS[0]])
    # 0.05 nats worse than the threshold on every document: pruned after the first.
    assert rule.should_prune([rule.threshold + OFFSETS[0] + 0.05])
    assert not rule.should_prune(list(rule.threshold + OFFSETS + 1.0))  # complete: never
    assert not rule.should_prune([])


def test_sequential_test_allows_more_error_with_fewer_documents_and_larger_z() -> None:
    history = population(np.random.default_rng(1), 64, 0.01, OFFSETS)
    loose, strict = sequential_test(history, 32, z=1.0), sequential_test(history, 32, z=4.0)
    assert (strict.lower < loose.lower).all()
    assert strict.lower[0] < strict.lower[-1] < 0  # the error narrows as documents come in


def test_sequential_test_rarely_stops_a_parent_and_quickly_stops_a_clear_loser() -> None:
    """Against candidates drawn like the population: those that would enter the top-k are
    stopped about Φ(−z) of the time per look; ones clearly worse are stopped early."""
    rng = np.random.default_rng(2)
    noise = 0.01
    rule = sequential_test(population(rng, 64, noise, OFFSETS), top_k=32, z=3.0)

    def first_stop(x: np.ndarray) -> int | None:
        return next((j for j in range(1, x.size) if rule.should_prune(list(x[:j]))), None)

    near = rule.threshold + OFFSETS + rng.normal(0, noise, (4000, OFFSETS.size))
    parents = [x for x in near if x.mean() <= rule.threshold]  # would have entered the top-k
    assert len(parents) > 1000
    stopped = sum(first_stop(x) is not None for x in parents)
    assert stopped / len(parents) < 0.01
    bad = rule.threshold + 0.05 + OFFSETS + rng.normal(0, noise, (500, OFFSETS.size))
    stops = [first_stop(x) for x in bad]
    assert all(s is not None for s in stops) and np.mean(stops) < 3


def test_prune_rule_picks_the_rule_and_waits_for_calibration() -> None:
    history = population(np.random.default_rng(3), MIN_CALIBRATION, 0.01, OFFSETS)
    evals = [Evaluation(str(i), tuple(row), OK, OFFSETS.size) for i, row in enumerate(history)]
    assert isinstance(prune_rule(evals, 4, "sequential"), SequentialTest)
    assert prune_rule(evals[:-1], 4, "sequential") is None  # too few to measure its error
    assert isinstance(prune_rule(evals[:-1], 4, "bound"), FloorBound)
    expected = floor_bound(history, 4, 0.02)
    np.testing.assert_array_equal(prune_rule(evals, 4).floors, expected.floors)
