"""Passkey prompts and the one-forward accuracy check, against real greedy generation."""

from __future__ import annotations

import pytest
import torch

from longrope_search.errors import ConfigError
from longrope_search.evaluation.passkey import (
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    build_prompt,
    passkey_accuracy,
    passkey_correct,
)
from longrope_search.model import rescaled
from longrope_search.rope import seed_candidate


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_prompt_length_depth_and_answer(embedded, depth: float) -> None:
    tok = embedded.tokenizer
    p = build_prompt(tok, 512, depth, "48213")
    assert 400 < len(p.input_ids) <= 512
    assert tok.decode(p.input_ids[p.answer_start:]).strip() == "48213"
    text = tok.decode(p.input_ids[: p.answer_start])
    needle = NEEDLE.format(key="48213")
    filler_chars = len(text) - len(INTRO) - len(needle) - len(QUESTION)
    where = (text.index(needle) - len(INTRO)) / filler_chars  # depth within the filler
    assert abs(where - depth) <= len(FILLER) / filler_chars  # within one filler line


def test_prompt_errors(embedded) -> None:
    with pytest.raises(ConfigError, match="depth"):
        build_prompt(embedded.tokenizer, 512, 1.5, "12345")
    with pytest.raises(ConfigError, match="length: 20 tokens cannot hold"):
        build_prompt(embedded.tokenizer, 20, 0.5, "12345")


@pytest.mark.parametrize("key", ["12345", "90817"])
def test_teacher_forced_check_equals_greedy_generation(embedded, key: str) -> None:
    model, tok, g = embedded.model, embedded.tokenizer, embedded.geometry
    p = build_prompt(tok, 300, 0.5, key)
    cand = seed_candidate("yarn", g, 300 / g.original_length)
    with rescaled(model, cand, g):
        correct, predicted = passkey_correct(model, p)
        prompt = torch.tensor([p.input_ids[: p.answer_start]])
        out = model.generate(prompt, max_new_tokens=len(p.input_ids) - p.answer_start,
                             do_sample=False, use_cache=False, pad_token_id=tok.eos_token_id)
    generated = out[0, p.answer_start:].tolist()
    assert predicted[0] == generated[0]
    assert correct == (generated == p.input_ids[p.answer_start:])


def test_accuracy_rows(embedded) -> None:
    g = embedded.geometry
    rows = passkey_accuracy(embedded.model, embedded.tokenizer, g, None, [256],
                            depths=[0.0, 1.0], trials=2, seed=3)
    assert [(r["depth"], r["trial"]) for r in rows] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert len({r["key"] for r in rows}) == 4
    assert all(isinstance(r["correct"], bool) for r in rows)
