"""FLOPs of a forward pass, for cost accounting and MFU: one count for the package and bench/."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ForwardFlops:
    """A causal LM's forward over one sequence of T tokens, by part."""

    matmul: float  # 2·P·T, P: the decoder layers' weights (norms' few included)
    attention: float  # 2·n_layers·d_attn·T²: QKᵀ and A·V, 2·T²·d_attn each, halved by the mask
    head: float  # 2·V·H·T, the LM head

    @property
    def total(self) -> float:
        """All of one forward's FLOPs: the matmuls, attention and the LM head."""
        return self.matmul + self.attention + self.head


def forward_flops(model: nn.Module, tokens: int) -> ForwardFlops:
    """F = 2·P·T + 2·n_layers·d_attn·T² + 2·V·H·T (d_attn = heads × head_dim). Llama-2-7B at
    32k: 4.25·10¹⁴ + 2.81·10¹⁴ + 0.09·10¹⁴ ≈ 7.1·10¹⁴."""
    cfg = model.config
    layers = model.get_decoder().layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ForwardFlops(
        matmul=2.0 * sum(p.numel() for p in layers.parameters()) * tokens,
        attention=2.0 * len(layers) * cfg.num_attention_heads * head_dim * tokens**2,
        head=2.0 * model.get_output_embeddings().weight.numel() * tokens,
    )


__all__ = ["ForwardFlops", "forward_flops"]
