"""LongRoPE's search space: λ on a grid, monotone, bounded; n̂ from a fixed set.

Genomes live on the integer grid (λ_i = step · g_i) so that equality, hashing and
"already seen" are exact. Pure numpy, no model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from longrope_search.errors import ConfigError
from longrope_search.rope import Candidate, RopeGeometry

N_HAT_CHOICES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)


@dataclass(frozen=True, eq=False)
class Genome:
    """λ as grid units (λ_i = step · grid_i) and the start-token threshold n̂."""

    grid: np.ndarray  # int64, one per rotary pair
    n_hat: int

    def __post_init__(self) -> None:
        grid = np.array(self.grid, dtype=np.int64)
        grid.setflags(write=False)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "n_hat", int(self.n_hat))
        h = hashlib.blake2b(grid.tobytes(), digest_size=10)
        h.update(np.int64(self.n_hat).tobytes())
        object.__setattr__(self, "_key", h.hexdigest())  # immutable, so hashed once

    @property
    def key(self) -> str:
        """Stable identity of the genome: equal keys are the same candidate."""
        return self._key


def critical_dim(geometry: RopeGeometry) -> int:
    """LongRoPE2's critical pair cd = ceil(log_b(L/2π) · d/2) − 1: the first pair whose period
    2π·b^(2i/d) exceeds the original length L (pairs below it saw full rotations in training)."""
    d, b, L = geometry.rotary_dim, geometry.base, geometry.original_length
    return max(0, math.ceil(math.log(L / (2 * math.pi)) / math.log(b) * d / 2) - 1)


@dataclass(frozen=True)
class SearchSpace:
    """Where candidates live.

    Args:
        num_pairs: d/2.
        extension_ratio: s = L'/L.
        target_length: L'; n̂ choices must be below it.
        lambda_min, lambda_max: bounds (default [1, 1.25·s]).
        step: grid step of λ (0.01 in the paper).
        strict: strictly increasing instead of non-decreasing.
        n_hat_choices: the allowed n̂ values.
        critical_dim: LongRoPE2 mode when set: only pairs ≥ cd are searched, with λ ≥ s;
            pairs below follow the NTK-shaped curve λ_i = λ_cd^(i/cd).
    """

    num_pairs: int
    extension_ratio: float
    target_length: int
    lambda_min: float = 1.0
    lambda_max: float | None = None
    step: float = 0.01
    strict: bool = False
    n_hat_choices: tuple[int, ...] = N_HAT_CHOICES
    critical_dim: int | None = None

    def __post_init__(self) -> None:
        if self.lambda_max is None:
            object.__setattr__(self, "lambda_max", 1.25 * self.extension_ratio)
        object.__setattr__(self, "n_hat_choices", tuple(sorted(set(self.n_hat_choices))))
        if not self.step > 0:
            raise ConfigError("space.step", f"must be > 0, got {self.step}", "use e.g. 0.01")
        if not 0 < self.lambda_min < self.lambda_max:
            raise ConfigError("space.lambda_max",
                              f"bounds [{self.lambda_min}, {self.lambda_max}] are empty",
                              "use 0 < lambda_min < lambda_max")
        if not self.n_hat_choices or min(self.n_hat_choices) < 0:
            raise ConfigError("space.n_hat", f"needs integers ≥ 0, got {self.n_hat_choices}",
                              "use e.g. [0, 1, 2, 4, 8]")
        too_long = [n for n in self.n_hat_choices if n >= self.target_length]
        if too_long:
            raise ConfigError("space.n_hat", f"values {too_long} are not below the target "
                              f"length {self.target_length}", "drop them from the choices")
        cd = self.critical_dim
        if cd is not None and not 0 <= cd < self.num_pairs:
            raise ConfigError("space.critical_dim", f"must be in [0, {self.num_pairs}), got {cd}",
                              "leave it unset to compute it from the model")
        lo, hi = self.bounds()
        if np.any(hi - lo < (self.num_searched - 1 if self.strict else 0)):
            raise ConfigError("space.lambda_max", "too narrow for a strictly increasing λ on "
                              "this grid", "widen the bounds, refine the step or use "
                              "monotone: non_decreasing")

    # -- grid ---------------------------------------------------------------------------------
    @property
    def searched(self) -> slice:
        """The pairs the search moves (all of them, or pairs ≥ cd in LongRoPE2 mode)."""
        return slice(self.critical_dim or 0, self.num_pairs)

    @property
    def num_searched(self) -> int:
        """How many pairs' λ the search moves (those below the critical dimension are fixed)."""
        return self.num_pairs - (self.critical_dim or 0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per searched pair, the lowest and highest grid value."""
        lo = math.ceil(self.lambda_min / self.step - 1e-9)
        if self.critical_dim is not None:
            lo = max(lo, math.ceil(self.extension_ratio / self.step - 1e-9))
        hi = math.floor(self.lambda_max / self.step + 1e-9)
        n = self.num_searched
        return np.full(n, lo, dtype=np.int64), np.full(n, hi, dtype=np.int64)

    def repair(self, values: np.ndarray) -> np.ndarray:
        """Project searched-pair grid values into the space: clip, then a running maximum
        (``+1`` per pair when strict), then clip from above keeping room for later pairs."""
        lo, hi = self.bounds()
        g = np.clip(np.asarray(values, dtype=np.int64), lo, hi)
        gap = 1 if self.strict else 0
        for i in range(1, g.size):
            g[i] = max(g[i], g[i - 1] + gap)
        ceiling = hi - gap * np.arange(g.size - 1, -1, -1)
        return np.minimum(g, ceiling)

    def is_valid(self, genome: Genome) -> bool:
        """Whether ``genome`` is in the space: the right length, within the bounds, monotone, an
        allowed n̂."""
        g = genome.grid[self.searched]
        lo, hi = self.bounds()
        steps = np.diff(g)
        monotone = np.all(steps >= 1) if self.strict else np.all(steps >= 0)
        return bool(genome.grid.size == self.num_pairs and np.all(g >= lo) and np.all(g <= hi)
                    and monotone and genome.n_hat in self.n_hat_choices
                    and np.array_equal(genome.grid, self.complete(g, genome.n_hat).grid))

    def complete(self, searched: np.ndarray, n_hat: int) -> Genome:
        """A full genome from searched-pair grid values (derives the LongRoPE2 prefix)."""
        cd = self.critical_dim or 0
        grid = np.empty(self.num_pairs, dtype=np.int64)
        grid[cd:] = searched
        if cd:
            prefix = self.expand(searched * self.step)[:cd]
            grid[:cd] = np.round(prefix / self.step).astype(np.int64)
        return Genome(grid, n_hat)

    def expand(self, searched: np.ndarray) -> np.ndarray:
        """Every pair's λ from the searched pairs' λ (off the grid too): in LongRoPE2 mode the
        pairs below cd follow the NTK-shaped curve λ_i = λ_cd^(i/cd), 1 at pair 0."""
        cd = self.critical_dim or 0
        prefix = float(searched[0]) ** (np.arange(cd) / cd) if cd else np.empty(0)
        return np.concatenate([prefix, searched])

    # -- conversions --------------------------------------------------------------------------
    def genome_from_lambdas(self, lambdas: np.ndarray, n_hat: int = 0) -> Genome:
        """Nearest valid genome to a λ vector (seeds from PI, NTK, YaRN, files)."""
        lam = np.asarray(lambdas, dtype=np.float64)
        if lam.size != self.num_pairs:
            raise ConfigError("lambdas", f"has {lam.size} values but the model has "
                              f"{self.num_pairs} rotary pairs", f"give {self.num_pairs} factors")
        g = np.round(lam[self.searched] / self.step).astype(np.int64)
        n = min(self.n_hat_choices, key=lambda c: (abs(c - n_hat), c))
        return self.complete(self.repair(g), n)

    def lambdas(self, genome: Genome) -> np.ndarray:
        """The genome's λ_i (grid × step)."""
        return np.round(genome.grid * self.step, 10)  # 1.4, not 1.4000000000000001

    def candidate(self, genome: Genome, attention_factor: float, name: str = "") -> Candidate:
        """The genome as a candidate to score or export."""
        return Candidate(self.lambdas(genome), genome.n_hat, attention_factor, name)

    def sample(self, rng: np.random.Generator) -> Genome:
        """A uniformly drawn sorted vector: a valid genome from anywhere in the space."""
        lo, hi = self.bounds()
        g = np.sort(rng.integers(lo, hi + 1))
        return self.complete(self.repair(g), int(rng.choice(self.n_hat_choices)))
