"""Passkey retrieval (Mohtashami & Jaggi 2023; LongRoPE §4.3): a 5-digit key hidden in filler.

A trial is correct when greedy decoding reproduces the key's tokens. Greedy decoding of the k-th
key token given correct earlier tokens is exactly the argmax under teacher forcing, so one
forward over prompt + key decides a trial: no generation loop, no KV cache (whose mixing of
rotations across the short/long switch is a known engine pitfall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from longrope_search.errors import ConfigError
from longrope_search.model.patch import rescaled
from longrope_search.rope import Candidate, RopeGeometry

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.\n")
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.\n")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    input_ids: list[int]  # prompt followed by the key's tokens
    answer_start: int  # index of the first key token
    key: str
    depth: float  # where the needle sits, 0 = start of the filler, 1 = end


def build_prompt(tokenizer, length: int, depth: float, key: str) -> PasskeyPrompt:
    """A prompt of about ``length`` tokens (never more) with the key at relative ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise ConfigError("depth", f"must be in [0, 1], got {depth}", "use e.g. 0, 0.5, 1")

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    answer = tokenizer(" " + key, add_special_tokens=False)["input_ids"]
    fixed = n_tokens(INTRO + NEEDLE.format(key=key) + QUESTION) + len(answer)
    per_filler = n_tokens(FILLER * 8) / 8
    n_fill = int((length - fixed) / per_filler)
    while n_fill >= 0:
        before = round(depth * n_fill)
        text = (INTRO + FILLER * before + NEEDLE.format(key=key) + FILLER * (n_fill - before)
                + QUESTION)
        prompt = tokenizer(text)["input_ids"]
        if len(prompt) + len(answer) <= length:
            return PasskeyPrompt(prompt + answer, len(prompt), key, depth)
        n_fill -= 1
    raise ConfigError("length", f"{length} tokens cannot hold the passkey prompt",
                      f"use a length of at least {fixed} tokens")


@torch.inference_mode()
def passkey_correct(model, prompt: PasskeyPrompt) -> tuple[bool, list[int]]:
    """Whether greedy decoding yields the key, and the predicted key tokens (teacher-forced)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt.input_ids], device=device)
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    start = prompt.answer_start
    logits = model.get_output_embeddings()(hidden[0, start - 1 : -1])
    predicted = logits.argmax(-1).tolist()
    return predicted == prompt.input_ids[start:], predicted


def passkey_accuracy(model, tokenizer, geometry: RopeGeometry, candidate: Candidate | None,
                     lengths: Sequence[int], depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                     trials: int = 5, seed: int = 0) -> list[dict]:
    """One row per (length, depth, trial): ``length, depth, trial, key, correct``.

    ``candidate=None`` scores the model as it is.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                key = str(rng.integers(10_000, 100_000))
                prompt = build_prompt(tokenizer, length, depth, key)
                if candidate is None:
                    correct, _ = passkey_correct(model, prompt)
                else:
                    with rescaled(model, candidate, geometry):
                        correct, _ = passkey_correct(model, prompt)
                rows.append({"length": length, "depth": depth, "trial": trial, "key": key,
                             "correct": correct})
    return rows
