"""The gradient of the search fitness in λ and m, through the frozen model.

λ enters the model only through the rotation angles n·θ_i/λ_i (and m through the scale of cos
and sin), so the mean NLL of the search documents at L' is a smooth function of every λ_i, and
one backward pass gives its gradient for all of them at once: about two forwards' cost, where a
finite difference would need d/2 + 1 forwards. The weights never get a gradient (they are frozen,
not copied); activations are recomputed layer by layer in the backward pass (activation
checkpointing), so a gradient step needs little more memory than a forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from longrope_search.evaluation.flops import forward_flops
from longrope_search.evaluation.perplexity import (
    IGNORE,
    MultiLengthScorer,
    PerplexityScorer,
    Scorer,
    chunked_nll,
)
from longrope_search.model.patch import apply_candidates
from longrope_search.rope import Candidate

# a step on a CPU, measured: 2.3–3.4 forwards (results/bench_gradient/bench_gradient.md)
CPU_STEP_FORWARDS = 3.0
FLASH_BACKWARD = 2.5  # attention's backward over its forward: 5 T×T matmuls (P recomputed) to 2


@dataclass(frozen=True)
class Gradient:
    """Per-document mean NLL of a candidate and the gradient of their mean in λ and m."""

    nll: np.ndarray  # (documents,)
    lambdas: np.ndarray  # ∂ mean NLL / ∂λ_i, (d/2,)
    attention_factor: float  # ∂ mean NLL / ∂m
    forward_tokens: int  # cost: forward + backward, in forward tokens
    step_forwards: float  # that cost over the forward tokens of the same documents

    @property
    def mean_nll(self) -> float:
        """The objective at this point: mean NLL over the documents."""
        return float(self.nll.mean())


@contextmanager
def activation_checkpointing(model: nn.Module) -> Iterator[None]:
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them. Uses transformers' own per-layer hook (``GradientCheckpointingLayer``); only the
    layer's own ``training`` flag is set, so dropout inside stays off."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [(m.gradient_checkpointing, m.training) for m in layers]
    for m in layers:
        m.gradient_checkpointing, m.training = True, True
        m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for m, (enabled, training) in zip(layers, saved, strict=True):
            m.gradient_checkpointing, m.training = enabled, training


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """No gradient for any weight (none is computed, none is stored), only for λ and m."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, wanted in saved:
            p.requires_grad_(wanted)


def _document_backward(scorer: PerplexityScorer, index: int, scale: float) -> float:
    """Mean NLL of document ``index`` (over the windows and tokens the scorer scores), its
    gradient (times ``scale``) accumulated into λ and m."""
    doc = scorer.documents[index]
    windows = []
    for begin, end, scored in scorer.spans(doc):
        ids = doc[begin:end][None]
        # the groups are disjoint (−100 elsewhere): one label set scores them all
        labels = torch.stack(scorer.label_sets(index, ids, scored)).amax(dim=0)
        windows.append((ids, labels))
    tokens = sum(int((labels != IGNORE).sum()) for _, labels in windows)
    return sum(_window_backward(scorer, ids, labels, scale / tokens)
               for ids, labels in windows) / tokens


def _window_backward(scorer: PerplexityScorer, ids: torch.Tensor, labels: torch.Tensor,
                     weight: float) -> float:
    """Summed NLL of a window's labelled tokens; its gradient × ``weight`` accumulated.

    The loss is taken in chunks of positions, each chunk's backward run at once into the final
    hidden states (detached), and then one backward through the model: the full positions ×
    vocabulary logits never exist, in the backward pass either."""
    hidden = scorer.decoder(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    end = hidden.detach().requires_grad_()  # (1, T-1, H): where the chunks' gradients gather
    labels = labels.to(hidden.device)
    scored = (labels[0] != IGNORE).nonzero()
    steps = labels.shape[1]
    total = 0.0
    for start in range(int(scored.min()), steps, scorer.chunk_tokens):
        sl = slice(start, start + scorer.chunk_tokens)
        if not bool((labels[:, sl] != IGNORE).any()):
            continue
        chunk, _ = chunked_nll(end[:, sl], labels[:, sl], scorer.lm_head, steps, scorer.softcap)
        (chunk.sum() * weight).backward()
        total += float(chunk.detach().sum())
    hidden.backward(end.grad)
    return total


def step_forwards(model: nn.Module, tokens: int, device: torch.device) -> float:
    """What a gradient step over ``tokens`` costs, in forwards of the same tokens.

    On a GPU, from the FLOP count. A forward is F = F_mm + F_att + F_head
    (:func:`~longrope_search.evaluation.flops.forward_flops`). The step runs each layer
    forward without keeping activations,
    again in the backward (checkpointing), then the backward itself, which computes input
    gradients only (the weights are frozen): F_mm + FLASH_BACKWARD·F_att. The head runs forward
    and backward once: step = 3·F_mm + (2 + FLASH_BACKWARD)·F_att + 2·F_head, 3.6 forwards for
    Llama-2-7B at 32k, 3.8 at 64k. On a CPU, the measured figure.
    """
    if device.type != "cuda":
        return CPU_STEP_FORWARDS
    f = forward_flops(model, tokens)
    step = 3 * f.matmul + (2 + FLASH_BACKWARD) * f.attention + 2 * f.head
    return step / f.total


def gradient(scorer: Scorer, candidate: Candidate) -> Gradient:
    """Mean NLL of ``candidate`` on the scorer's documents and its gradient (one forward and
    one backward per document window); for a multi-length fitness, the weighted sum of each
    length's."""
    if isinstance(scorer, MultiLengthScorer):
        parts = [gradient(p, candidate) for p in scorer.parts]
        w = scorer.weights
        cost = sum(g.forward_tokens for g in parts)
        return Gradient(sum(wi * g.nll for wi, g in zip(w, parts, strict=True)),
                        sum(wi * g.lambdas for wi, g in zip(w, parts, strict=True)),
                        float(sum(wi * g.attention_factor for wi, g in zip(w, parts,
                                                                            strict=True))),
                        cost, cost / sum(scorer.forward_tokens))
    return _gradient(scorer, candidate)


def _gradient(scorer: PerplexityScorer, candidate: Candidate) -> Gradient:
    model = scorer.model
    rope = apply_candidates(model, candidate, scorer.geometry)
    # beside the rotary buffers, which a model spread over GPUs keeps on its last one
    like = {"dtype": rope.base_inv_freq.dtype, "device": rope.base_inv_freq.device}
    lambdas = torch.tensor(candidate.lambdas, **like, requires_grad=True)
    m = torch.tensor(candidate.attention_factor, **like, requires_grad=True)
    rope.set_trainable(lambdas, m)
    nll = np.empty(scorer.num_documents)
    try:
        with torch.enable_grad(), frozen_weights(model), activation_checkpointing(model):
            for i in range(scorer.num_documents):
                nll[i] = _document_backward(scorer, i, scale=1.0 / scorer.num_documents)
    finally:
        rope.set_candidates([candidate])  # back to plain buffers
    forward = sum(scorer.forward_tokens)
    cost = sum((end - begin) * step_forwards(model, end - begin, rope.base_inv_freq.device)
               for doc in scorer.documents for begin, end, _ in scorer.spans(doc))
    return Gradient(nll, lambdas.grad.cpu().double().numpy(), float(m.grad), round(cost),
                    cost / forward)


__all__ = ["Gradient", "activation_checkpointing", "frozen_weights", "gradient"]
