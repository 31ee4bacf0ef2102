"""Applying a candidate in place reproduces transformers' own RoPE types, on four architectures."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from longrope_search.errors import NoRotaryEmbeddingError
from longrope_search.model import apply_candidates, find_rotary_embedding, rescaled, restore_rope
from longrope_search.rope import Candidate, RopeGeometry, attention_factor, seed_candidate

ORIGINAL = 32
S = 4.0
LENGTH = 96  # past the original context, so longrope picks long_factor

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"head_dim": 24}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "phi3": (Phi3Config, Phi3ForCausalLM, {"partial_rotary_factor": 0.5}),
}


def tiny(arch: str, rope: dict | None = None, max_pos: int = ORIGINAL):
    config_cls, model_cls, extra = ARCHS[arch]
    kwargs = {
        "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": max_pos,
        "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None, **extra,
    }
    rope = {"rope_type": "default", "rope_theta": 500.0, **(rope or {})}
    if arch == "phi3":  # Phi-3 keeps original_max_position_embeddings at config level
        kwargs["original_max_position_embeddings"] = rope.pop("original_max_position_embeddings",
                                                               ORIGINAL)
    if arch == "phi3" and rope["rope_type"] not in ("default", "longrope"):
        # Phi3Config's validation admits only longrope; its rotary module runs any type.
        config = config_cls(**kwargs, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
        config.rope_parameters = rope
    else:
        config = config_cls(**kwargs, rope_parameters=rope)
    config._attn_implementation = "eager"
    return model_cls(config).eval()


def same_weights(reference, arch: str, rope: dict, max_pos: int):
    model = tiny(arch, rope, max_pos)
    model.load_state_dict(reference.state_dict())
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(1, 97, (2, LENGTH), generator=torch.Generator().manual_seed(0))


def setup(arch: str):
    torch.manual_seed(0)
    model = tiny(arch)
    return model, RopeGeometry.from_config(model.config)


def test_pi_candidate_equals_linear(arch: str, ids: torch.Tensor) -> None:
    model, g = setup(arch)
    reference = same_weights(model, arch, {"rope_type": "linear", "factor": S}, ORIGINAL)
    before = logits(model, ids)
    apply_candidates(model, seed_candidate("pi", g, S))
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, logits(model, ids), atol=1e-3)  # it did change something


def test_yarn_candidate_equals_yarn(arch: str, ids: torch.Tensor) -> None:
    model, g = setup(arch)
    reference = same_weights(model, arch, {
        "rope_type": "yarn", "factor": S, "original_max_position_embeddings": ORIGINAL,
    }, int(S * ORIGINAL))
    cand = seed_candidate("yarn", g, S)
    assert cand.attention_factor == pytest.approx(attention_factor("yarn", S, ORIGINAL))
    apply_candidates(model, cand)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)


def test_any_lambdas_equal_longrope_long_factor(arch: str, ids: torch.Tensor) -> None:
    model, g = setup(arch)
    lam = np.sort(np.random.default_rng(1).uniform(1.0, 1.25 * S, g.num_pairs))
    reference = same_weights(model, arch, {
        "rope_type": "longrope", "long_factor": lam.tolist(), "short_factor": [1.0] * g.num_pairs,
        "original_max_position_embeddings": ORIGINAL,
    }, int(S * ORIGINAL))
    cand = Candidate.create(lam, num_pairs=g.num_pairs,
                            attention_factor=attention_factor("su", S, ORIGINAL))
    apply_candidates(model, cand)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)


def test_n_hat_keeps_first_positions_unscaled(arch: str, ids: torch.Tensor) -> None:
    model, g = setup(arch)
    unscaled = logits(model, ids)
    n_hat = 12
    cand = seed_candidate("pi", g, S).with_(n_hat=n_hat, attention_factor=1.3)
    with rescaled(model, cand):
        out = logits(model, ids)
    with rescaled(model, cand.with_(n_hat=0)):
        without_n_hat = logits(model, ids)
    # Causal attention: positions < n̂ see only unscaled rotations, so they equal the plain model.
    torch.testing.assert_close(out[:, :n_hat], unscaled[:, :n_hat], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, n_hat:], unscaled[:, n_hat:], atol=1e-3)
    assert not torch.allclose(out[:, n_hat:], without_n_hat[:, n_hat:], atol=1e-4)


def test_n_hat_cos_sin_follow_eq3() -> None:
    model, g = setup("llama")
    cand = seed_candidate("ntk", g, S).with_(n_hat=5, attention_factor=1.2)
    module = apply_candidates(model, cand)
    pos = torch.arange(20)[None]
    cos, sin = module(torch.zeros(1, dtype=torch.float64), pos)
    theta = g.inv_freq
    n = np.arange(20)[:, None]
    angles = np.where(n < 5, n * theta, n * theta / cand.lambdas)
    m = np.where(n < 5, 1.0, 1.2)
    np.testing.assert_allclose(cos[0, :, : g.num_pairs].numpy(), m * np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin[0, :, g.num_pairs:].numpy(), m * np.sin(angles), atol=1e-6)


def test_restore_is_exact_and_weights_are_not_copied(arch: str, ids: torch.Tensor) -> None:
    model, g = setup(arch)
    before = logits(model, ids)
    params = {n: p.data_ptr() for n, p in model.named_parameters()}
    state_keys = set(model.state_dict())
    _, original = find_rotary_embedding(model)
    apply_candidates(model, seed_candidate("yarn", g, S))
    apply_candidates(model, seed_candidate("ntk", g, S))  # swap without stacking modules
    assert set(model.state_dict()) == state_keys
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == params
    restore_rope(model)
    assert find_rotary_embedding(model)[1] is original
    assert torch.equal(logits(model, ids), before)


def test_batched_candidates_match_one_at_a_time() -> None:
    model, g = setup("llama")
    doc = torch.randint(1, 97, (1, LENGTH), generator=torch.Generator().manual_seed(3))
    cands = [seed_candidate(n, g, S) for n in ("pi", "ntk", "yarn")]
    cands[1] = cands[1].with_(n_hat=8)
    singles = []
    for c in cands:
        with rescaled(model, c):
            singles.append(logits(model, doc))
    with rescaled(model, cands):
        batched = logits(model, doc.repeat(3, 1))
    torch.testing.assert_close(batched, torch.cat(singles), rtol=1e-5, atol=1e-5)


def test_model_without_rope_is_refused() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(NoRotaryEmbeddingError, match="model: GPT2LMHeadModel has no rotary"):
        apply_candidates(model, Candidate(np.ones(8)))


def test_wrong_length_candidate_is_refused_before_forward() -> None:
    model, g = setup("llama")
    with pytest.raises(ValueError, match=f"model has {g.num_pairs} rotary pairs"):
        apply_candidates(model, Candidate(np.ones(g.num_pairs + 1)))
    assert copy.deepcopy(find_rotary_embedding(model)[0]) == "model.rotary_emb"
