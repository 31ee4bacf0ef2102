"""Needle-driven fitness (LongRoPE2): the loss on answers that only long-range retrieval gives.

Into each document (already cut to L' tokens) go a few needle sentences, "One of the special
magic numbers for <key> is: <number>.", each with its own key and random 7-digit number, at
depths spread evenly over the context (after the newline nearest each depth). The questions,
one per needle in order, end the document; only their answer tokens are scored. Depth d is the
needle's relative position in the text: 0 the start (farthest from its question), 1 the end.

Everything is decided by the seed (numbers, keys) and the documents, so a needle job is
deterministic. LongRoPE2's public code scores plain perplexity by mistake (it writes
``cus_label`` and reads ``cus_labels``); here only answer tokens carry labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from longrope_search.errors import ConfigError

NEEDLE = " One of the special magic numbers for {key} is: {number}.\n"
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
KEYS = ("wandering-age", "silent-harbor", "amber-falcon", "paper-lantern", "iron-meadow",
        "hollow-comet", "quiet-orchard", "velvet-canyon", "copper-tide", "marble-echo",
        "frozen-garden", "crimson-valley", "gentle-thunder", "distant-lake", "bright-anchor",
        "lucky-compass")
SNAP = 64  # tokens to look ahead for a newline to insert after


@dataclass(frozen=True)
class NeedleDocument:
    """A document with needles: its tokens and, per needle, where the answer is scored."""

    ids: torch.Tensor  # (L',)
    answers: tuple[tuple[int, int], ...]  # per needle: [start, end) of its answer tokens in ids
    positions: tuple[int, ...]  # per needle: where its sentence starts in ids
    depths: tuple[float, ...]  # per needle: its intended relative depth
    numbers: tuple[str, ...]


def depths(needles: int) -> tuple[float, ...]:
    """Depths spread evenly over the context, ends excluded: (i + 0.5) / n."""
    return tuple((i + 0.5) / needles for i in range(needles))


def needle_documents(documents: Sequence[torch.Tensor], tokenizer, length: int, needles: int,
                     seed: int) -> list[NeedleDocument]:
    """Each document cut and filled with ``needles`` needles so that it is ``length`` tokens."""
    if not 1 <= needles <= len(KEYS):
        raise ConfigError("scoring.needles", f"must be 1 … {len(KEYS)}, got {needles}",
                          "use e.g. needles: 4")
    rng = np.random.default_rng([seed, 7])
    newline = _newline_tokens(tokenizer)
    return [_one(doc, tokenizer, length, needles, rng, newline) for doc in documents]


def _newline_tokens(tokenizer) -> frozenset[int]:
    return frozenset(i for i in range(len(tokenizer))
                     if "\n" in tokenizer.decode([i], clean_up_tokenization_spaces=False))


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _one(doc: torch.Tensor, tokenizer, length: int, needles: int, rng: np.random.Generator,
         newline: frozenset[int]) -> NeedleDocument:
    keys = [KEYS[i] for i in rng.choice(len(KEYS), size=needles, replace=False)]
    numbers = [str(int(rng.integers(1_000_000, 10_000_000))) for _ in range(needles)]
    sentences = [_encode(tokenizer, NEEDLE.format(key=k, number=n))
                 for k, n in zip(keys, numbers, strict=True)]
    questions = [_encode(tokenizer, QUESTION.format(key=k)) for k in keys]
    answers = [_encode(tokenizer, " " + n) for n in numbers]
    tail = sum(len(q) + len(a) for q, a in zip(questions, answers, strict=True))
    room = length - tail - sum(len(s) for s in sentences)
    if room < 8 * needles:
        raise ConfigError("scoring.needles", f"{needles} needles and their questions need "
                          f"{length - room} of the {length} tokens",
                          "use fewer needles or a longer target")
    body = doc[:room].tolist()
    ids: list[int] = []
    positions, cut = [], 0
    for d, sentence in zip(depths(needles), sentences, strict=True):
        at = _after_newline(body, int(d * room), newline, cut)
        ids += body[cut:at]
        positions.append(len(ids))
        ids += sentence
        cut = at
    ids += body[cut:]
    spans = []
    for q, a in zip(questions, answers, strict=True):
        ids += q
        spans.append((len(ids), len(ids) + len(a)))
        ids += a
    assert len(ids) == length, (len(ids), length)
    return NeedleDocument(torch.tensor(ids, dtype=torch.long), tuple(spans), tuple(positions),
                          depths(needles), tuple(numbers))


def _after_newline(body: list[int], target: int, newline: frozenset[int], floor: int) -> int:
    """The first position at or after ``target`` that follows a newline (within SNAP)."""
    target = max(target, floor)
    for i in range(target, min(target + SNAP, len(body))):
        if i > 0 and body[i - 1] in newline:
            return i
    return target


def answer_labels(doc: NeedleDocument) -> list[torch.Tensor]:
    """Per needle, next-token labels (L'−1,) that score only its answer tokens (−100 else)."""
    out = []
    for start, end in doc.answers:
        labels = torch.full((doc.ids.numel() - 1,), -100, dtype=torch.long)
        labels[start - 1 : end - 1] = doc.ids[start:end]  # label t predicts token t + 1
        out.append(labels)
    return out


__all__ = ["KEYS", "NEEDLE", "QUESTION", "NeedleDocument", "answer_labels", "depths",
           "needle_documents"]
