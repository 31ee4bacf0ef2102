"""A candidate rescaling: LongRoPE's genome (λ, n̂) plus the attention factor m."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longrope_search.errors import ConfigError


@dataclass(frozen=True, eq=False)
class Candidate:
    """λ_i per rotary pair, the start-token threshold n̂ and the attention factor m.

    LongRoPE Eq. 3: position n rotates pair i by n·θ_i when n < n̂ and by n·θ_i/λ_i otherwise.
    Both cos and sin of rescaled positions are multiplied by m, so attention logits scale by m².

    Build candidates with :meth:`create`, which validates against the model's geometry; the plain
    constructor only checks what holds for every model.
    """

    lambdas: np.ndarray
    n_hat: int = 0
    attention_factor: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        try:
            lam = np.array(self.lambdas, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError("lambdas", "must be a list of numbers",
                              "give one number per rotary pair") from None
        if lam.ndim != 1 or lam.size == 0:
            raise ConfigError("lambdas", f"must be a non-empty 1-D vector, got shape {lam.shape}",
                              "give one rescale factor per rotary pair")
        if not np.all(np.isfinite(lam)):
            bad = int(np.flatnonzero(~np.isfinite(lam))[0])
            raise ConfigError("lambdas", f"λ[{bad}] is {lam[bad]}, not a finite number",
                              "replace NaN/inf values")
        if np.any(lam <= 0):
            bad = int(np.flatnonzero(lam <= 0)[0])
            raise ConfigError("lambdas", f"λ[{bad}] = {lam[bad]} is not positive",
                              "rescale factors must be > 0 (1 keeps a pair unscaled)")
        lam.setflags(write=False)
        object.__setattr__(self, "lambdas", lam)
        n_hat = self.n_hat
        integral = isinstance(n_hat, (int, np.integer)) or (
            isinstance(n_hat, float) and n_hat.is_integer())
        if isinstance(n_hat, bool) or not integral or n_hat < 0:
            raise ConfigError("n_hat", f"must be an integer ≥ 0, got {self.n_hat!r}",
                              "use 0 to rescale every position")
        object.__setattr__(self, "n_hat", int(self.n_hat))
        try:
            m = float(self.attention_factor)
        except (TypeError, ValueError):
            m = float("nan")
        if not np.isfinite(m) or m <= 0:
            raise ConfigError("attention_factor",
                              f"must be a finite number > 0, got {self.attention_factor!r}",
                              "use 1.0 for no attention scaling")
        object.__setattr__(self, "attention_factor", m)

    @classmethod
    def create(
        cls,
        lambdas: Sequence[float] | np.ndarray,
        *,
        num_pairs: int,
        n_hat: int = 0,
        attention_factor: float = 1.0,
        name: str = "",
        allow_below_one: bool = False,
        monotone: bool = False,
    ) -> Candidate:
        """Build and validate a candidate for a model with ``num_pairs`` = d/2 rotary pairs.

        Args:
            allow_below_one: accept λ_i < 1 (faster rotation than pretraining; off by default).
            monotone: require λ_0 ≤ λ_1 ≤ … (LongRoPE's search constraint).
        """
        cand = cls(lambdas, n_hat, attention_factor, name)  # type: ignore[arg-type]
        lam = cand.lambdas
        if lam.size != num_pairs:
            raise ConfigError(
                "lambdas", f"has {lam.size} values but the model has {num_pairs} rotary pairs",
                f"give exactly {num_pairs} factors (rotary_dim / 2)",
            )
        if not allow_below_one and np.any(lam < 1.0):
            bad = int(np.flatnonzero(lam < 1.0)[0])
            raise ConfigError("lambdas", f"λ[{bad}] = {lam[bad]:.6g} is below 1",
                              "clip factors to ≥ 1, or allow values below 1 explicitly")
        if monotone and np.any(np.diff(lam) < 0):
            bad = int(np.flatnonzero(np.diff(lam) < 0)[0])
            raise ConfigError(
                "lambdas", f"not non-decreasing: λ[{bad}] = {lam[bad]:.6g} > λ[{bad + 1}] = "
                f"{lam[bad + 1]:.6g}", "sort the factors or repair with a running maximum",
            )
        return cand

    def with_(self, **changes: object) -> Candidate:
        """A copy with some of ``lambdas``, ``n_hat``, ``attention_factor``, ``name`` replaced."""
        fields = {"lambdas": self.lambdas, "n_hat": self.n_hat,
                  "attention_factor": self.attention_factor, "name": self.name}
        fields.update(changes)
        return Candidate(**fields)  # type: ignore[arg-type]

    def key(self, step: float = 0.01) -> str:
        """Hash of the genome quantised to the search grid: equal keys are the same candidate."""
        grid = np.round(self.lambdas / step).astype(np.int64)
        h = hashlib.blake2b(grid.tobytes(), digest_size=12)
        h.update(np.int64(self.n_hat).tobytes())
        h.update(np.float64(round(self.attention_factor, 6)).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        lam = self.lambdas
        head = f"{self.name}: " if self.name else ""
        return (f"Candidate({head}λ[{lam.size}] {lam[0]:.3g}…{lam[-1]:.3g}, n̂={self.n_hat}, "
                f"m={self.attention_factor:.4g})")
