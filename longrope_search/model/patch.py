"""Apply candidates to a loaded transformers model in place, and restore it exactly.

In transformers 5 the rotary embedding is computed once per forward at model level
(``model.model.rotary_emb`` returns cos, sin that every layer uses), so one module swap rescales
the whole model: no reload, no copy of the weights. Swapping candidates afterwards only replaces
a few small buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError
from longrope_search.rope import Candidate, RopeGeometry


def find_rotary_embedding(model: nn.Module) -> tuple[str, nn.Module]:
    """The model-level rotary module: ``(dotted name, module)``.

    Raises:
        NoRotaryEmbeddingError: the model has no rotary embedding at all.
        ConfigError: rotary modules live inside each layer (pre-v5 modelling code), or there are
            several kinds (per-layer-type RoPE), which one swap cannot rescale.
    """
    found = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, RescaledRotaryEmbedding)
        or (name.rsplit(".", 1)[-1].startswith("rotary_emb") and hasattr(module, "inv_freq"))
    ]
    if not found:
        raise NoRotaryEmbeddingError(
            "model", f"{type(model).__name__} has no rotary embedding module",
            "LongRoPE needs a RoPE model (Llama, Mistral, Qwen2, Phi-3, Gemma, …)",
        )
    if any(".layers." in name for name, _ in found):
        raise ConfigError(
            "model", f"{type(model).__name__} computes RoPE inside each layer",
            "use transformers ≥ 5 modelling code, where RoPE is computed once at model level",
        )
    if len(found) > 1:
        raise ConfigError(
            "model", f"{type(model).__name__} has several rotary modules "
            f"({', '.join(n for n, _ in found)})", "use a model with a single RoPE setting",
        )
    return found[0]


def base_inv_freq(geometry: RopeGeometry, device: torch.device | None = None) -> torch.Tensor:
    """θ_i = b^(−2i/d) in float32, computed exactly as transformers' default RoPE does."""
    d = geometry.rotary_dim
    exponent = torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d
    return 1.0 / (geometry.base ** exponent)


class RescaledRotaryEmbedding(nn.Module):
    """Model-level rotary embedding for one candidate, or several sharing one batched forward.

    With C candidates and a batch of B = C·k rows, rows [j·k, (j+1)·k) use candidate j. For each
    row, position n rotates pair i by n·θ_i/λ_i scaled by m when n ≥ n̂, and by the original
    n·θ_i (unscaled, m = 1) when n < n̂ (LongRoPE Eq. 3).
    """

    def __init__(self, original: nn.Module, geometry: RopeGeometry,
                 candidates: Sequence[Candidate]) -> None:
        super().__init__()
        self.__dict__["original"] = original  # kept out of the module tree and the state dict
        self.geometry = geometry
        device = next((b.device for b in original.buffers()), torch.device("cpu"))
        self.register_buffer("base_inv_freq", base_inv_freq(geometry, device), persistent=False)
        self.register_buffer("inv_freq", self.base_inv_freq.clone(), persistent=False)
        self.register_buffer("attention_factor", torch.ones(1, device=device), persistent=False)
        self.register_buffer("n_hat", torch.zeros(1, dtype=torch.long, device=device),
                             persistent=False)
        self.set_candidates(candidates)

    @torch.no_grad()
    def set_candidates(self, candidates: Sequence[Candidate]) -> None:
        """Swap in new candidates (validated against the geometry); cheap, no reallocation of
        anything but (C, d/2) floats."""
        if not candidates:
            raise ConfigError("candidates", "no candidate given", "pass at least one candidate")
        pairs = self.geometry.num_pairs
        for c in candidates:
            if c.lambdas.size != pairs:
                raise ConfigError(
                    "lambdas", f"candidate {c.name or '?'} has {c.lambdas.size} factors but the "
                    f"model has {pairs} rotary pairs", f"give exactly {pairs} factors")
        device = self.base_inv_freq.device
        lambdas = torch.tensor(np.stack([c.lambdas for c in candidates]), dtype=torch.float32,
                               device=device)
        self.inv_freq = self.base_inv_freq / lambdas
        self.attention_factor = torch.tensor(
            [c.attention_factor for c in candidates], dtype=torch.float32, device=device)
        self.n_hat = torch.tensor([c.n_hat for c in candidates], dtype=torch.long, device=device)
        self.any_n_hat = any(c.n_hat > 0 for c in candidates)
        self.trainable: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_trainable(self, lambdas: torch.Tensor, attention_factor: torch.Tensor) -> None:
        """Rotate by λ (d/2,) and scale by m (a scalar), tensors that may require grad, so a
        backward pass through the model differentiates the loss in λ and m (one candidate; its
        n̂ stays). ``set_candidates`` ends it."""
        if self.num_candidates != 1:
            raise ValueError("a trainable λ needs exactly one candidate applied")
        self.trainable = (lambdas, attention_factor)

    @property
    def num_candidates(self) -> int:
        """How many candidates one forward scores (the batch's leading dimension)."""
        return self.inv_freq.shape[0]

    def _per_row(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        c = t.shape[0]
        if c == 1:
            return t
        if rows % c:
            raise ValueError(f"batch of {rows} rows cannot be split over {c} candidates")
        return t.repeat_interleave(rows // c, dim=0)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, d) on ``position_ids``' device, whatever device the buffers are on
        (a model spread over GPUs keeps them on the last one and its positions on the first)."""
        rows, dev = x.shape[0], position_ids.device  # position_ids may be (1, T) for the batch
        pos = position_ids[..., None].float()  # (B|1, T, 1)
        inv_freq, m = self.inv_freq, self.attention_factor  # (C, d/2), (C,)
        if self.trainable is not None:  # θ_i/λ_i and m with their gradients
            lambdas, m = self.trainable
            inv_freq, m = (self.base_inv_freq / lambdas)[None], m.reshape(1)
        inv_freq = self._per_row(inv_freq.to(dev), rows)[:, None, :]  # (B|1, 1, d/2)
        m = self._per_row(m.to(dev), rows)[:, None, None]
        emb = (pos * inv_freq).repeat(1, 1, 2)  # cat(freqs, freqs), as transformers does
        cos, sin = emb.cos() * m, emb.sin() * m
        if self.any_n_hat:
            emb0 = (pos * self.base_inv_freq.to(dev)).repeat(1, 1, 2)
            keep = (position_ids < self._per_row(self.n_hat.to(dev), rows)[:, None])[..., None]
            cos = torch.where(keep, emb0.cos(), cos)
            sin = torch.where(keep, emb0.sin(), sin)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def _keep_device_hook(original: nn.Module, rescaled: RescaledRotaryEmbedding) -> None:
    """Give the new module the device placement accelerate gave the original.

    With ``device_map`` (one model over several GPUs) accelerate hooks each module with an
    ``AlignDevicesHook`` that moves its inputs to the module's GPU; a plain ``setattr`` would
    drop it. Only placement is kept (never offload: the new buffers are not in its weights map).
    """
    hook = getattr(original, "_hf_hook", None)
    if hook is None:
        return
    # accelerate (0.2 s) is loaded only for a model that device_map placed
    from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module

    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    align = next((h for h in hooks if isinstance(h, AlignDevicesHook)), None)
    if align is not None and align.execution_device is not None:
        add_hook_to_module(rescaled, AlignDevicesHook(execution_device=align.execution_device,
                                                      io_same_device=align.io_same_device))


def apply_candidates(model: nn.Module, candidates: Candidate | Sequence[Candidate],
                     geometry: RopeGeometry | None = None) -> RescaledRotaryEmbedding:
    """Rescale ``model``'s RoPE in place to the given candidate(s). Returns the live module.

    Calling it again swaps candidates without touching anything else; :func:`restore_rope` puts
    the model's own module back.
    """
    cands = [candidates] if isinstance(candidates, Candidate) else list(candidates)
    name, module = find_rotary_embedding(model)
    if isinstance(module, RescaledRotaryEmbedding):
        module.set_candidates(cands)
        return module
    geometry = geometry or RopeGeometry.from_config(model.config)
    rescaled = RescaledRotaryEmbedding(module, geometry, cands)
    _keep_device_hook(module, rescaled)
    _set_submodule(model, name, rescaled)
    return rescaled


def restore_rope(model: nn.Module) -> None:
    """Put the model's original rotary module back (exact: it was never modified)."""
    name, module = find_rotary_embedding(model)
    if isinstance(module, RescaledRotaryEmbedding):
        _set_submodule(model, name, module.original)


@contextmanager
def rescaled(model: nn.Module, candidates: Candidate | Sequence[Candidate],
             geometry: RopeGeometry | None = None) -> Iterator[RescaledRotaryEmbedding]:
    """``with rescaled(model, cand): ...`` — apply for the block, restore afterwards."""
    module = apply_candidates(model, candidates, geometry)
    try:
        yield module
    finally:
        restore_rope(model)
