"""Property tests: every genome the operators return is in bounds, on the grid, monotone, unseen."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope_search.errors import ConfigError
from longrope_search.rope import RopeGeometry, ntk_lambdas, pi_lambdas, yarn_lambdas
from longrope_search.search.operators import SpaceExhausted, crossover, mutate
from longrope_search.search.space import Genome, SearchSpace, critical_dim


@st.composite
def spaces(draw) -> SearchSpace:
    pairs = draw(st.integers(2, 64))
    s = draw(st.sampled_from([1.5, 2.0, 4.0, 8.0, 32.0]))
    strict = draw(st.booleans())
    step = draw(st.sampled_from([0.01, 0.05, 0.1]))
    cd = draw(st.one_of(st.none(), st.integers(0, pairs - 1)))
    lowest = s if cd is not None else 1.0  # LongRoPE2 searches λ ≥ s
    lam_max = 1.25 * s
    if strict and (lam_max - lowest) / step < pairs:
        lam_max = lowest + step * (pairs + draw(st.integers(1, 20)))
    return SearchSpace(num_pairs=pairs, extension_ratio=s, target_length=int(4096 * s),
                       lambda_max=lam_max, step=step, strict=strict, critical_dim=cd)


def assert_valid(space: SearchSpace, g: Genome) -> None:
    lam = space.lambdas(g)[space.searched]
    lo, hi = space.bounds()
    assert space.is_valid(g)
    assert np.all(g.grid[space.searched] >= lo) and np.all(g.grid[space.searched] <= hi)
    assert np.allclose(lam / space.step, np.round(lam / space.step))
    diffs = np.diff(g.grid[space.searched])
    assert np.all(diffs >= (1 if space.strict else 0))
    assert g.n_hat in space.n_hat_choices


@settings(max_examples=150, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**32 - 1), p=st.floats(0.01, 1.0))
def test_operators_return_valid_unseen_genomes_quickly(space: SearchSpace, seed: int,
                                                       p: float) -> None:
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    assert_valid(space, a)
    assert_valid(space, b)
    seen = {a.key, b.key}
    t0 = time.perf_counter()
    try:
        for i in range(40):
            child = (mutate(a, space, rng, p, seen) if i % 2
                     else crossover(a, b, space, rng, p, seen))
            assert_valid(space, child)
            assert child.key not in seen
            seen.add(child.key)
    except SpaceExhausted:  # only a tiny space may run out: nearly all of it was seen
        lo, hi = space.bounds()
        assert space.num_searched <= 3 or (hi - lo).max() <= 40
    assert time.perf_counter() - t0 < 2.0  # bounded: no open-ended rejection loop


@settings(max_examples=50, deadline=None)
@given(space=spaces(), data=st.data())
def test_repair_projects_any_vector_into_the_space(space: SearchSpace, data) -> None:
    values = data.draw(st.lists(st.integers(-500, 5000), min_size=space.num_searched,
                                max_size=space.num_searched))
    assert_valid(space, space.complete(space.repair(np.array(values)), 0))


def test_tiny_space_is_exhausted_with_an_error_not_a_hang() -> None:
    space = SearchSpace(num_pairs=2, extension_ratio=1.02, target_length=200, step=0.01,
                        lambda_max=1.01, n_hat_choices=(0,))
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    found = set()
    with pytest.raises(SpaceExhausted):
        for _ in range(10):
            g = mutate(space.sample(rng), space, rng, 0.5, seen)
            seen.add(g.key)
            found.add(tuple(g.grid))
    assert found <= {(100, 100), (100, 101), (101, 101)}


def test_seeds_map_onto_the_grid() -> None:
    g = RopeGeometry(128, 128, 1e4, 4096)
    space = SearchSpace(num_pairs=64, extension_ratio=8, target_length=32768)
    for lam in (pi_lambdas(g, 8), ntk_lambdas(g, 8), yarn_lambdas(g, 8)):
        genome = space.genome_from_lambdas(lam)
        assert_valid(space, genome)
        np.testing.assert_allclose(space.lambdas(genome), lam, atol=0.005 + 1e-9)


def test_space_validation_names_fields() -> None:
    with pytest.raises(ConfigError, match=r"space.n_hat: values \[256\] are not below"):
        SearchSpace(num_pairs=4, extension_ratio=2, target_length=256)
    with pytest.raises(ConfigError, match=r"space\.lambda_max"):
        SearchSpace(num_pairs=64, extension_ratio=1.1, target_length=4096, strict=True,
                    n_hat_choices=(0,))


def test_longrope2_mode() -> None:
    g = RopeGeometry(128, 128, 1e4, 4096)
    cd = critical_dim(g)
    period = 2 * np.pi / g.inv_freq
    assert period[cd] < g.original_length <= period[cd + 1]  # cd is the last full-period pair
    space = SearchSpace(num_pairs=64, extension_ratio=8, target_length=32768, critical_dim=cd)
    genome = space.sample(np.random.default_rng(1))
    lam = space.lambdas(genome)
    assert np.all(lam[cd:] >= 8) and lam[0] == 1.0
    assert np.all(np.diff(lam) >= 0)


