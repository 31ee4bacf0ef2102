"""The seeds' frequencies against transformers' own ROPE_INIT_FUNCTIONS, and the paper's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError
from longrope_search.rope import (
    Candidate,
    RopeGeometry,
    attention_factor,
    dynamic_ntk_lambdas,
    llama3_lambdas,
    ntk_lambdas,
    pi_lambdas,
    seed_candidate,
    yarn_correction_range,
    yarn_lambdas,
)

HEAD_DIMS = (64, 96, 128)
BASES = (1e4, 5e5, 1e6)
RATIOS = (2, 4, 8, 16, 32)
ORIGINAL = 4096


def hf_config(head_dim: int, base: float, rope: dict, max_pos: int = ORIGINAL) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=max_pos, rope_parameters={"rope_theta": base, **rope},
    )


def hf_inv_freq(config: LlamaConfig, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    fn = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]]
    inv_freq, m = fn(config, device=None, seq_len=seq_len)
    return inv_freq.double().numpy(), float(m)


def ours(g: RopeGeometry, lambdas: np.ndarray) -> np.ndarray:
    return g.inv_freq / lambdas


def assert_rel(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


grid = pytest.mark.parametrize(
    ("head_dim", "base", "s"),
    [(h, b, s) for h in HEAD_DIMS for b in BASES for s in RATIOS],
)


@grid
def test_linear_matches_pi(head_dim: int, base: float, s: float) -> None:
    cfg = hf_config(head_dim, base, {"rope_type": "linear", "factor": float(s)})
    g = RopeGeometry.from_config(cfg)
    assert_rel(ours(g, pi_lambdas(g, s)), hf_inv_freq(cfg)[0])


@grid
def test_dynamic_matches_dynamic_ntk_at_each_length(head_dim: int, base: float, s: float) -> None:
    cfg = hf_config(head_dim, base, {"rope_type": "dynamic", "factor": float(s)})
    g = RopeGeometry.from_config(cfg)
    for length in (ORIGINAL // 2, ORIGINAL, 2 * ORIGINAL, int(s * ORIGINAL), 3 * int(s * ORIGINAL)):
        assert_rel(ours(g, dynamic_ntk_lambdas(g, s, length)), hf_inv_freq(cfg, length)[0])


@grid
def test_static_ntk_is_dynamic_at_original_length_with_base_change(
    head_dim: int, base: float, s: float
) -> None:
    # NTK-aware: b' = b·s^(d/(d−2)) — a default RoPE with that base.
    g = RopeGeometry(head_dim, head_dim, base, ORIGINAL)
    cfg = hf_config(head_dim, base * s ** (head_dim / (head_dim - 2)), {"rope_type": "default"})
    cfg.rope_parameters["rope_type"] = "linear"
    cfg.rope_parameters["factor"] = 1.0
    assert_rel(ours(g, ntk_lambdas(g, s)), hf_inv_freq(cfg)[0], rtol=2e-6)


@grid
@pytest.mark.parametrize(("beta_fast", "beta_slow", "truncate"), [(32, 1, True), (128, 2, False)])
def test_yarn_matches_yarn(
    head_dim: int, base: float, s: float, beta_fast: float, beta_slow: float, truncate: bool
) -> None:
    cfg = hf_config(head_dim, base, {
        "rope_type": "yarn", "factor": float(s), "original_max_position_embeddings": ORIGINAL,
        "beta_fast": beta_fast, "beta_slow": beta_slow, "truncate": truncate,
    }, max_pos=int(s * ORIGINAL))
    g = RopeGeometry.from_config(cfg)
    expected, m = hf_inv_freq(cfg)
    # Without truncation the ramp bounds are non-integers that transformers rounds to float32
    # before the ramp; that rounding alone moves its inv_freq by up to ~1.5e-6 relative.
    rtol = 1e-6 if truncate else 3e-6
    assert_rel(ours(g, yarn_lambdas(g, s, beta_fast, beta_slow, truncate)), expected, rtol)
    assert seed_candidate("yarn", g, s).attention_factor == pytest.approx(m, rel=1e-12)


@grid
def test_llama3_matches_llama3(head_dim: int, base: float, s: float) -> None:
    cfg = hf_config(head_dim, base, {
        "rope_type": "llama3", "factor": float(s), "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL,
    })
    g = RopeGeometry.from_config(cfg)
    assert_rel(ours(g, llama3_lambdas(g, s, 1.0, 4.0)), hf_inv_freq(cfg)[0])


@grid
def test_longrope_long_factor_and_su_factor(head_dim: int, base: float, s: float) -> None:
    rng = np.random.default_rng(head_dim + int(s))
    long_factor = np.sort(rng.uniform(1, 1.25 * s, head_dim // 2))
    cfg = hf_config(head_dim, base, {
        "rope_type": "longrope", "long_factor": long_factor.tolist(),
        "short_factor": [1.0] * (head_dim // 2), "original_max_position_embeddings": ORIGINAL,
    }, max_pos=int(s * ORIGINAL))
    g = RopeGeometry.from_config(cfg)
    expected, m = hf_inv_freq(cfg, seq_len=ORIGINAL + 1)
    cand = seed_candidate("model", g, s)
    assert_rel(ours(g, cand.lambdas), expected)
    assert cand.attention_factor == pytest.approx(m, rel=1e-12)
    assert attention_factor("su", s, ORIGINAL) == pytest.approx(m, rel=1e-12)


def test_llama2_7b_reference_values() -> None:
    """REFERENCE.md: Llama-2-7B (d=128, b=1e4, L=4096, s=8) at pairs 0, 8, 16, 24, 32, 63."""
    g = RopeGeometry(head_dim=128, rotary_dim=128, base=1e4, original_length=4096)
    pairs = [0, 8, 16, 24, 32, 63]
    np.testing.assert_allclose(ntk_lambdas(g, 8)[pairs], [1, 1.302, 1.696, 2.208, 2.876, 8],
                               atol=6e-4)
    np.testing.assert_allclose(yarn_lambdas(g, 8)[pairs], [1, 1, 1, 1.156, 1.677, 8], atol=6e-4)
    assert yarn_correction_range(g) == (20, 46)
    assert attention_factor("su", 8, 4096) == pytest.approx(1.11803, abs=1e-5)
    assert attention_factor("yarn", 8, 4096) == pytest.approx(1.20794, abs=1e-5)
    # Dynamic NTK at ℓ = L' with factor s is much stronger than static NTK: s_eff = 57.
    np.testing.assert_allclose(dynamic_ntk_lambdas(g, 8, 8 * 4096)[-1], 57.0)


def test_seeds_are_monotone_and_bounded() -> None:
    g = RopeGeometry(128, 128, 5e5, 8192)
    for name in ("pi", "ntk", "yarn", "llama3", "dynamic_ntk"):
        lam = seed_candidate(name, g, 8.0).lambdas
        assert np.all(np.diff(lam) >= -1e-12), name
        assert lam.min() >= 1 - 1e-12, name


@pytest.mark.parametrize(
    ("config", "head_dim", "rotary_dim", "base", "original"),
    [
        (LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096,
                     rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
         64, 64, 5e5, 4096),
        (MistralConfig(hidden_size=256, num_attention_heads=4, head_dim=128,
                       max_position_embeddings=32768, rope_theta=1e6), 128, 128, 1e6, 32768),
        (Qwen2Config(hidden_size=384, num_attention_heads=4, max_position_embeddings=32768,
                     rope_scaling={"type": "linear", "factor": 2.0, "rope_theta": 1e6}),
         96, 96, 1e6, 32768),
        (Phi3Config(hidden_size=384, num_attention_heads=4, partial_rotary_factor=0.5,
                    max_position_embeddings=131072, original_max_position_embeddings=4096,
                    rope_scaling={"type": "longrope", "long_factor": [1.5] * 24,
                                  "short_factor": [1.0] * 24}),
         96, 48, 1e4, 4096),
        (GemmaConfig(hidden_size=256, num_attention_heads=2, head_dim=256,
                     max_position_embeddings=8192), 256, 256, 1e4, 8192),
    ],
    ids=["llama-v5", "mistral-explicit-head-dim", "qwen2-legacy-rope-scaling", "phi3-partial",
         "gemma-head-dim-exceeds-hidden-per-head"],
)
def test_geometry_from_configs(config, head_dim, rotary_dim, base, original) -> None:
    g = RopeGeometry.from_config(config)
    assert (g.head_dim, g.rotary_dim, g.base, g.original_length) == (
        head_dim, rotary_dim, base, original)
    assert g.num_pairs == rotary_dim // 2
    ref = 1.0 / (base ** (torch.arange(0, rotary_dim, 2).double() / rotary_dim))
    assert_rel(g.inv_freq, ref.numpy(), rtol=1e-12)


def test_geometry_refuses_model_without_rope() -> None:
    from transformers import GPT2Config

    with pytest.raises(NoRotaryEmbeddingError, match="model: model_type 'gpt2' has no rotary"):
        RopeGeometry.from_config(GPT2Config())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambdas": [1.0, 2.0, 3.0]}, "lambdas: has 3 values but the model has 4 rotary pairs"),
        ({"lambdas": [1.0, float("nan"), 2.0, 2.0]}, r"λ\[1\] is nan"),
        ({"lambdas": [1.0, 0.5, 2.0, 2.0]}, r"λ\[1\] = 0.5 is below 1"),
        ({"lambdas": [1.0, 3.0, 2.0, 4.0], "monotone": True}, r"not non-decreasing: λ\[1\]"),
        ({"lambdas": [1.0] * 4, "n_hat": -1}, "n_hat: must be an integer ≥ 0"),
        ({"lambdas": [1.0] * 4, "attention_factor": 0.0}, "attention_factor: must be a finite"),
    ],
)
def test_candidate_validation_names_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Candidate.create(num_pairs=4, **kwargs)


def test_candidate_accepts_valid_input_and_keys_on_the_grid() -> None:
    a = Candidate.create([1.0, 1.5, 2.0, 2.0], num_pairs=4, monotone=True, n_hat=4)
    b = Candidate.create([1.001, 1.5, 2.0, 2.0], num_pairs=4, n_hat=4)
    c = a.with_(n_hat=8)
    assert a.key() == b.key() != c.key()
    assert Candidate.create([0.9, 1.0], num_pairs=2, allow_below_one=True).lambdas[0] == 0.9
    with pytest.raises(ValueError):
        a.lambdas[0] = 5.0  # immutable genome


@pytest.mark.parametrize("bad", [0.5, float("nan"), "x", None])
def test_seed_refuses_bad_ratio(bad) -> None:
    g = RopeGeometry(64, 64, 1e4, 128)
    with pytest.raises(ConfigError, match="extension_ratio"):
        seed_candidate("pi", g, bad)


def test_attention_policies() -> None:
    assert attention_factor("none", 8, 4096) == 1.0
    assert attention_factor(1.3, 8, 4096) == 1.3
    assert attention_factor("yarn", 8, 4096) == pytest.approx(0.1 * math.log(8) + 1)
    with pytest.raises(ConfigError, match="attention_factor: unknown policy"):
        attention_factor("bogus", 8, 4096)
