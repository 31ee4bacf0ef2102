"""Long-sequence perplexity of candidates: LongRoPE's search fitness.

Two modes:

* ``truncate`` — each document cut to L' tokens, one forward per document (the paper's fitness);
* ``sliding`` — Press et al.'s sliding window of L' tokens with a stride (256 by default), every
  token scored once with as much left context as the window allows.

The loss is computed in chunks from the final hidden states, so the full tokens × vocab logits
never exist at once (the naive ``model(ids, labels=ids)`` holds them, in fp32, several times).
Several candidates can share one batched forward: the rescaled rotary module gives each row its
own cos/sin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from longrope_search.errors import ConfigError
from longrope_search.evaluation.modes import SLIDING, TRUNCATE, WINDOW_MODES, WindowMode
from longrope_search.model.patch import apply_candidates
from longrope_search.rope import Candidate, RopeGeometry

IGNORE = -100
LOGITS_BUDGET_BYTES = 256 * 2**20  # fp32 logits alive at once, per chunk


@dataclass(frozen=True)
class ScoreResult:
    """A candidate's per-document mean NLL (nats/token) and scored-token counts."""

    candidate: Candidate
    nll: np.ndarray
    tokens: np.ndarray

    @property
    def mean_nll(self) -> float:
        """Mean NLL per token over every document (each weighed by its tokens); ppl = exp of it."""
        return float(np.sum(self.nll * self.tokens) / np.sum(self.tokens))

    @property
    def ppl(self) -> float:
        """exp of the token-weighted mean NLL (equal weights in truncate mode)."""
        return math.exp(self.mean_nll)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sums of many per-token losses, but on Apple's MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def chunked_nll(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module,
                chunk_tokens: int, softcap: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and token count per row, without materialising all logits.

    Args:
        hidden: final hidden states (B, T, H); ``hidden[:, t]`` predicts ``labels[:, t]``.
        labels: (B, T) target ids, ``-100`` where a position is not scored.
        chunk_tokens: how many positions' logits (fp32) exist at once.
    """
    rows, steps = labels.shape
    scored = (labels != IGNORE).reshape(-1)
    flat_h = hidden.reshape(rows * steps, -1)[scored]  # logits only where a token is scored
    flat_y = labels.reshape(-1)[scored]
    row_of = torch.arange(rows, device=labels.device).repeat_interleave(steps)[scored]
    total = torch.zeros(rows, dtype=accumulator_dtype(labels.device), device=labels.device)
    for start in range(0, flat_y.numel(), chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        logits = lm_head(flat_h[sl]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        nll = nn.functional.cross_entropy(logits, flat_y[sl], reduction="none")
        total.index_add_(0, row_of[sl], nll.to(total.dtype))
    count = (labels != IGNORE).sum(dim=1)
    return total, count


def windows(n_tokens: int, length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """Sliding windows ``(begin, end, scored)`` over a document (Press et al., HF's recipe):
    each window holds up to ``length`` tokens and scores its last ``scored`` of them."""
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        yield begin, end, end - prev_end
        prev_end = end
        if end == n_tokens:
            break


def window_labels(ids: torch.Tensor, scored: int) -> torch.Tensor:
    """Next-token labels of a window (1, T) → (1, T−1), ``-100`` but for its last ``scored``."""
    labels = ids[:, 1:].clone()
    labels[:, : max(0, labels.shape[1] - scored)] = IGNORE
    return labels


FILLS_A_GPU = 8192  # tokens per forward from which more rows gain < 0.5% (7B, 32k-64k)


def auto_batch_size(model: nn.Module, seq_len: int, max_batch: int = 16) -> int:
    """Candidates per forward for ``batch_size: auto`` on the model's device."""
    device = next(model.parameters()).device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    return batch_for(device, seq_len, free, model.config,
                     next(model.parameters()).element_size(), max_batch)


def batch_for(device: torch.device, seq_len: int, free_bytes: int, config: Any,
              element_size: int, max_batch: int = 16) -> int:
    """1 on CPU, where batching does not pay (results/bench_scorer/bench_scorer.md), and on a
    GPU at long lengths, where one row of ``FILLS_A_GPU`` tokens already fills it and more rows
    only widen what an out-of-memory error costs; else as many rows as fill ``FILLS_A_GPU``
    tokens and fit in free memory."""
    if device.type != "cuda":
        return 1
    kv = 2 * getattr(config, "num_key_value_heads", config.num_attention_heads) * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    # one layer's activations alive at a time in a no-grad forward, doubled for allocator slack
    per_row = 2 * seq_len * element_size * (
        4 * config.hidden_size + 3 * config.intermediate_size + kv)
    fits = (free_bytes * 0.8 - LOGITS_BUDGET_BYTES * 3) // per_row
    return int(max(1, min(max_batch, FILLS_A_GPU // seq_len, fits)))


class PerplexityScorer:
    """Scores candidates on fixed documents with a model loaded once.

    Args:
        model: a transformers causal LM (any dtype/device), patched in place per candidate.
        geometry: its RoPE geometry.
        documents: 1-D token-id tensors.
        length: L', the evaluation length (truncate) or window (sliding).
        mode: ``truncate`` or ``sliding``.
        stride: sliding-window stride.
        batch_size: candidates per forward, or ``"auto"``.
        groups: truncate mode: per document, the label sets (T−1,) scored, each a group of its
            own (a needle's answer tokens, see :mod:`.needles`); default one group, every next
            token.
    """

    def __init__(self, model: nn.Module, geometry: RopeGeometry,
                 documents: Sequence[torch.Tensor], *, length: int, mode: WindowMode = TRUNCATE,
                 stride: int = 256, batch_size: int | str = "auto",
                 groups: Sequence[Sequence[torch.Tensor]] | None = None) -> None:
        if mode not in WINDOW_MODES:
            raise ConfigError("mode", f"unknown scoring mode {mode!r}",
                              f"use one of {WINDOW_MODES}")
        if length < 2:
            raise ConfigError("length", f"must be ≥ 2 tokens, got {length}",
                              "set the target length L'")
        if not documents:
            raise ConfigError("documents", "no documents given", "give at least one document")
        lengths = [int(d.numel()) for d in documents]
        if mode == TRUNCATE and min(lengths) < length:
            short = sum(n < length for n in lengths)
            raise ConfigError(
                "documents", f"{short} of {len(lengths)} documents are shorter than the "
                f"evaluation length {length} (shortest {min(lengths)} tokens)",
                "load documents with min_tokens ≥ length, or use mode: sliding")
        if mode == SLIDING and not 0 < stride <= length:
            raise ConfigError("stride", f"must be in (0, {length}], got {stride}",
                              "use a stride no longer than the window")
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError("batch_size", f"must be 'auto' or an integer ≥ 1, got {batch_size!r}",
                              "use auto")
        self.model, self.geometry = model, geometry
        self.length, self.mode, self.stride = length, mode, stride
        self.device = next(model.parameters()).device
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        vocab = self.lm_head.weight.shape[0]
        self.chunk_tokens = max(1, LOGITS_BUDGET_BYTES // (4 * vocab))
        if mode == TRUNCATE:
            documents = [d[:length] for d in documents]
        self.documents = [d.to(self.device, torch.long) for d in documents]
        self.batch_size = (auto_batch_size(model, length) if batch_size == "auto"
                           else int(batch_size))
        self.forward_tokens = [self._forward_tokens(d) for d in self.documents]
        if groups is not None and (mode != TRUNCATE or len(groups) != len(documents)):
            raise ConfigError("groups", "label groups go with truncate mode, one list per "
                              "document", "score needles in truncate mode")
        self.groups = None if groups is None else [[g.to(self.device) for g in gs]
                                                    for gs in groups]
        self._minibatches: dict[tuple[int, int], PerplexityScorer] = {}

    def minibatch(self, index: int, count: int) -> PerplexityScorer:
        """The scorer of documents ``index``, ``index + count``, … (a gradient step's
        minibatch), sharing the model; itself when ``count`` is 1."""
        if count == 1:
            return self
        if not 0 <= index < count <= self.num_documents:
            raise ConfigError("strategy_options.minibatches", f"minibatch {index} of {count} "
                              f"with {self.num_documents} documents",
                              "use at most as many minibatches as k_documents")
        key = (index, count)
        if key not in self._minibatches:
            self._minibatches[key] = PerplexityScorer(
                self.model, self.geometry, self.documents[index::count], length=self.length,
                mode=self.mode, stride=self.stride, batch_size=self.batch_size,
                groups=None if self.groups is None else self.groups[index::count])
        return self._minibatches[key]

    def _forward_tokens(self, doc: torch.Tensor) -> int:
        """Tokens one candidate's forward passes process on a document (the search's unit of
        cost): the document itself when truncated, every window in full when sliding."""
        return sum(end - begin for begin, end, _ in self.spans(doc))

    def spans(self, doc: torch.Tensor) -> list[tuple[int, int, int]]:
        """The windows ``(begin, end, scored)`` a document is scored in: the whole (truncated)
        document, or sliding windows scoring their last ``scored`` tokens."""
        if self.mode == TRUNCATE:
            return [(0, doc.numel(), doc.numel())]
        return list(windows(doc.numel(), self.length, self.stride))

    @property
    def num_documents(self) -> int:
        """How many documents a candidate is scored on."""
        return len(self.documents)

    def label_sets(self, index: int, ids: torch.Tensor, scored: int) -> list[torch.Tensor]:
        """The label sets (1, T−1) of a window of document ``index``: one per group."""
        if self.groups is None:
            return [window_labels(ids, scored)]
        return [g[None] for g in self.groups[index]]

    @torch.inference_mode()
    def _forward_nll(self, ids: torch.Tensor, label_sets: Sequence[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL (rows, groups) and scored tokens (groups,) of one forward."""
        hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
        # with layers spread over GPUs (device_map) the last hidden state is on another device
        out = [chunked_nll(hidden, labels.expand(ids.shape[0], -1).to(hidden.device),
                           self.lm_head, self.chunk_tokens, self.softcap)
               for labels in label_sets]
        totals = torch.stack([t for t, _ in out], dim=1)  # (rows, groups)
        counts = torch.stack([c[0] for _, c in out])  # the same for every row
        return totals.to(self.device), counts.to(self.device)

    def _document_nll(self, rows: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (rows, groups), one row per applied candidate, and scored tokens per
        group."""
        doc = self.documents[index]
        total, count = None, None
        for begin, end, scored in self.spans(doc):
            ids = doc[begin:end][None]
            nll, n = self._forward_nll(ids.expand(rows, -1), self.label_sets(index, ids, scored))
            total = nll if total is None else total + nll
            count = n if count is None else count + n
        return total.cpu().numpy(), count.cpu().numpy()

    def score_groups(self, candidates: Sequence[Candidate], index: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Mean NLL of each candidate on each group of document ``index`` (C, groups), and the
        tokens each group scores."""
        out = np.empty((len(candidates), len(self.groups[index]) if self.groups else 1))
        count = np.zeros(out.shape[1])
        for start in range(0, len(candidates), self.batch_size):
            group = list(candidates[start : start + self.batch_size])
            apply_candidates(self.model, group, self.geometry)
            nll, count = self._document_nll(len(group), index)
            out[start : start + len(group)] = nll / count
        return out, count

    def score_document(self, candidates: Sequence[Candidate], index: int
                       ) -> tuple[np.ndarray, int]:
        """Mean NLL of each candidate on document ``index`` (all its groups), and the tokens
        scored.

        Scoring one document at a time is what lets a search stop a hopeless candidate early.
        """
        per_group, count = self.score_groups(candidates, index)
        return (per_group * count).sum(axis=1) / count.sum(), int(count.sum())

    @torch.inference_mode()
    def retrieved(self, candidate: Candidate) -> np.ndarray:
        """Per document and group (documents, groups): whether greedy decoding reproduces
        every scored token, i.e. the argmax at each labelled position is its label (teacher
        forcing decides greedy decoding of the k-th token given correct earlier ones)."""
        apply_candidates(self.model, [candidate], self.geometry)
        out = []
        for i, doc in enumerate(self.documents):
            hidden = self.decoder(input_ids=doc[None], use_cache=False).last_hidden_state[0, :-1]
            row = []
            for labels in self.label_sets(i, doc[None], doc.numel()):
                at = (labels[0] != IGNORE).nonzero()[:, 0]
                guess = self.lm_head(hidden[at.to(hidden.device)]).argmax(dim=-1)
                row.append(bool((guess.to(labels.device) == labels[0, at]).all()))
            out.append(row)
        return np.array(out)

    def score(self, candidates: Sequence[Candidate],
              on_document: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """Every candidate on every document; ``on_document(i)`` after each (progress bars)."""
        nll, tokens = _every_document(self, candidates, on_document)
        return [ScoreResult(c, nll[j], tokens.copy()) for j, c in enumerate(candidates)]


class MultiLengthScorer:
    """A multi-length fitness: each document's loss is the weighted mean of its mean NLL on its
    first n tokens, over the lengths n of the parts (one :class:`PerplexityScorer` each, on the
    same documents and model). It scores like a single scorer, one document at a time, so early
    stopping and batching work unchanged; a document costs the forward tokens of every length.
    """

    def __init__(self, parts: Sequence[PerplexityScorer], weights: Sequence[float]) -> None:
        if len(parts) != len(weights) or not parts:
            raise ConfigError("scoring.weights", f"{len(weights)} weights for {len(parts)} "
                              "lengths", "give one weight per length")
        self.parts, self.weights = list(parts), np.asarray(weights, dtype=np.float64)
        first = self.parts[0]
        self.model, self.geometry, self.device = first.model, first.geometry, first.device
        self.batch_size, self.groups = first.batch_size, None
        self.length = max(p.length for p in self.parts)
        self.forward_tokens = [sum(ts) for ts in zip(*(p.forward_tokens for p in self.parts),
                                                     strict=True)]

    @property
    def num_documents(self) -> int:
        """How many documents a candidate is scored on (the same at every length)."""
        return self.parts[0].num_documents

    def minibatch(self, index: int, count: int) -> MultiLengthScorer:
        """The ``index``-th of ``count`` document minibatches, at every length."""
        if count == 1:
            return self
        return MultiLengthScorer([p.minibatch(index, count) for p in self.parts], self.weights)

    def score_groups(self, candidates: Sequence[Candidate], index: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean NLL of each candidate on document ``index`` (C, 1), and the
        tokens scored at all lengths."""
        per_length = [p.score_document(candidates, index) for p in self.parts]
        nll = sum(w * v for w, (v, _) in zip(self.weights, per_length, strict=True))
        return np.asarray(nll)[:, None], np.array([sum(n for _, n in per_length)])

    def score_document(self, candidates: Sequence[Candidate], index: int
                       ) -> tuple[np.ndarray, int]:
        """Each candidate's weighted NLL over the lengths on document ``index``; its tokens."""
        nll, count = self.score_groups(candidates, index)
        return nll[:, 0], int(count[0])

    def score(self, candidates: Sequence[Candidate],
              on_document: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """Each candidate's weighted NLL on every document (each document weighs the same)."""
        nll, _ = _every_document(self, candidates, on_document)
        ones = np.ones(self.num_documents, dtype=np.int64)  # each document weighs the same
        return [ScoreResult(c, nll[j], ones) for j, c in enumerate(candidates)]


Scorer = PerplexityScorer | MultiLengthScorer


def _every_document(scorer: Scorer, candidates: Sequence[Candidate],
                    on_document: Callable[[int], None] | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean NLL of every candidate on every document (C, D), and the tokens scored (D,)."""
    nll = np.empty((len(candidates), scorer.num_documents))
    tokens = np.empty(scorer.num_documents, dtype=np.int64)
    for i in range(scorer.num_documents):
        nll[:, i], tokens[i] = scorer.score_document(candidates, i)
        if on_document:
            on_document(i)
    return nll, tokens
