"""Hand-made rescalings written as λ vectors (θ'_i = θ_i / λ_i): the search's seeds and baselines.

One small function per method, formulas in plain sight. Each returns λ for pairs
i = 0 … d/2−1 of a model with geometry ``g`` at extension ratio s = L'/L.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from longrope_search.errors import ConfigError
from longrope_search.rope.attention import attention_factor
from longrope_search.rope.candidate import Candidate
from longrope_search.rope.geometry import RopeGeometry


def _check_ratio(s: float) -> None:
    if not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 1):
        raise ConfigError("extension_ratio", f"must be a number ≥ 1, got {s!r}",
                          "set target_length ≥ original_length (s = L'/L)")


def pi_lambdas(g: RopeGeometry, s: float) -> np.ndarray:
    """Position interpolation (PI, arXiv 2306.15595): λ_i = s for every pair."""
    _check_ratio(s)
    return np.full(g.num_pairs, float(s))


def ntk_lambdas(g: RopeGeometry, s: float) -> np.ndarray:
    """NTK-aware scaling: b' = b·s^(d/(d−2)), i.e. λ_i = s^(2i/(d−2)); λ_0 = 1, λ_last = s."""
    _check_ratio(s)
    d = g.rotary_dim
    return float(s) ** (np.arange(g.num_pairs, dtype=np.float64) * 2 / (d - 2))


def dynamic_ntk_lambdas(g: RopeGeometry, s: float, length: int) -> np.ndarray:
    """Dynamic NTK at current length ℓ: NTK with s_eff = s·ℓ/L − (s−1), ℓ clamped to ≥ L."""
    _check_ratio(s)
    s_eff = s * max(length, g.original_length) / g.original_length - (s - 1)
    return ntk_lambdas(g, s_eff)


def yarn_correction_range(
    g: RopeGeometry, beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True
) -> tuple[float, float]:
    """YaRN's ramp bounds: c(r) = d·ln(L/(2πr)) / (2 ln b), low = c(β_fast), high = c(β_slow).

    With ``truncate`` low is floored and high ceiled; both are clamped to [0, d−1].
    """
    d, b, L = g.rotary_dim, g.base, g.original_length

    def c(r: float) -> float:
        return d * math.log(L / (2 * math.pi * r)) / (2 * math.log(b))

    low, high = c(beta_fast), c(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def yarn_lambdas(
    g: RopeGeometry, s: float, beta_fast: float = 32.0, beta_slow: float = 1.0,
    truncate: bool = True,
) -> np.ndarray:
    """YaRN NTK-by-parts (arXiv 2309.00071 Eq. 18–19).

    ramp_j = clamp((j − low)/(high − low), 0, 1), e_j = 1 − ramp_j, λ_j = 1 / (e_j + (1 − e_j)/s):
    high-frequency pairs extrapolate (λ = 1), low-frequency pairs interpolate (λ = s).
    """
    _check_ratio(s)
    low, high = yarn_correction_range(g, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(g.num_pairs, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    e = 1.0 - ramp
    return 1.0 / (e + (1.0 - e) / s)


def llama3_lambdas(
    g: RopeGeometry, s: float, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0
) -> np.ndarray:
    """Llama 3.1 wavelength bands: λ = 1 for wavelengths < L/high_freq_factor, λ = s above
    L/low_freq_factor, and 1/λ blended linearly in L/wavelength between them."""
    _check_ratio(s)
    wavelen = 2 * math.pi / g.inv_freq
    L = g.original_length
    smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    inv_scale = np.where(wavelen > L / low_freq_factor, 1.0 / s, 1.0)
    medium = (wavelen >= L / high_freq_factor) & (wavelen <= L / low_freq_factor)
    inv_scale = np.where(medium, (1 - smooth) / s + smooth, inv_scale)
    return 1.0 / inv_scale


def config_long_factor(g: RopeGeometry) -> np.ndarray:
    """The ``long_factor`` already in a model's ``longrope`` config (Phi-3-128k, say)."""
    factor = g.rope_parameters.get("long_factor")
    if factor is None:
        raise ConfigError("rope_parameters.long_factor",
                          f"the model's RoPE (type '{g.rope_type}') has no long_factor",
                          "seed from a model whose config uses rope_type 'longrope'")
    return np.asarray(factor, dtype=np.float64)


def rescale_ratio(lambdas: np.ndarray, from_ratio: float, to_ratio: float) -> np.ndarray:
    """λ found for ratio s, mapped to ratio s' as LongRoPE's code maps a stage's solution
    (``--auto-rescale-init-factors``): λ' = 1 + (λ − 1)(s' − 1)/(s − 1). λ = 1 stays 1 and
    λ = s becomes s', so PI maps to PI; factors below 1 are kept as they are."""
    lam = np.asarray(lambdas, dtype=np.float64)
    if from_ratio <= 1:
        raise ConfigError("extension_ratio", f"cannot map factors of ratio {from_ratio}",
                          "map from a ratio above 1")
    return np.where(lam >= 1, 1 + (lam - 1) * (to_ratio - 1) / (from_ratio - 1), lam)


# name -> (λ function taking (geometry, s, length), the method's own attention-factor policy)
_SEEDS: dict[str, tuple[Callable[[RopeGeometry, float, int], np.ndarray], str]] = {
    "none": (lambda g, s, n: np.ones(g.num_pairs), "none"),
    "pi": (lambda g, s, n: pi_lambdas(g, s), "none"),
    "ntk": (lambda g, s, n: ntk_lambdas(g, s), "none"),
    "dynamic_ntk": (lambda g, s, n: dynamic_ntk_lambdas(g, s, n), "none"),
    "yarn": (lambda g, s, n: yarn_lambdas(g, s), "yarn"),
    "llama3": (lambda g, s, n: llama3_lambdas(g, s), "none"),
    "model": (lambda g, s, n: config_long_factor(g), "su"),
}
SEED_NAMES = tuple(_SEEDS)


def seed_candidate(
    name: str, g: RopeGeometry, extension_ratio: float, *,
    length: int | None = None, attention: str | float | None = None,
) -> Candidate:
    """A named hand-made rescaling as a :class:`Candidate`.

    Args:
        name: one of :data:`SEED_NAMES` (``none`` is plain extrapolation, ``model`` the
            long_factor in the model's own config).
        extension_ratio: s = L'/L.
        length: the evaluated length ℓ, for ``dynamic_ntk`` (default s·L).
        attention: attention-factor policy; default is the method's own (YaRN's temperature for
            ``yarn``, su for ``model``, none otherwise).
    """
    if name not in _SEEDS:
        raise ConfigError("seed", f"unknown seed {name!r}", f"use one of {SEED_NAMES}")
    _check_ratio(extension_ratio)
    fn, own_policy = _SEEDS[name]
    n = length if length is not None else round(extension_ratio * g.original_length)
    lambdas = fn(g, extension_ratio, n)
    policy = own_policy if attention is None else attention
    if name == "model" and attention is None and "attention_factor" in g.rope_parameters:
        policy = float(g.rope_parameters["attention_factor"])
    m = attention_factor(policy, extension_ratio, g.original_length)
    return Candidate.create(lambdas, num_pairs=g.num_pairs, attention_factor=m, name=name,
                            allow_below_one=name == "model")
