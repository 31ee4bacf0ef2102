"""What a model's RoPE looks like: rotary dimension, base and original context.

Read from any transformers config (Llama, Mistral, Qwen2, Phi-3, Gemma-style explicit
``head_dim``), whether its RoPE settings live in v5 ``rope_parameters`` or legacy
``rope_scaling``/``rope_theta`` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError

DEFAULT_ROPE_THETA = 10_000.0


@dataclass(frozen=True)
class RopeGeometry:
    """The fixed facts of a RoPE model that every rescaling is computed from.

    Attributes:
        head_dim: size of one attention head.
        rotary_dim: d, the rotated part of a head (``head_dim * partial_rotary_factor``).
        base: b, ``rope_theta``.
        original_length: L, the context the model was pretrained on.
        model_type: the config's ``model_type``, for messages and exports.
        rope_parameters: the model's own RoPE settings as found (``rope_type``, factors, …).
    """

    head_dim: int
    rotary_dim: int
    base: float
    original_length: int
    model_type: str = ""
    rope_parameters: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ConfigError(
                "rotary_dim", f"must be an even number ≥ 2, got {self.rotary_dim}",
                "check head_dim and partial_rotary_factor in the model config",
            )
        if not self.base > 1:
            raise ConfigError("rope_theta", f"must be > 1, got {self.base}", "fix the model config")
        if self.original_length < 2:
            raise ConfigError(
                "original_max_position_embeddings", f"must be ≥ 2, got {self.original_length}",
                "set the model's pretraining context length",
            )

    @property
    def num_pairs(self) -> int:
        """d/2: the number of rotary frequency pairs, and so the length of every λ vector."""
        return self.rotary_dim // 2

    @property
    def inv_freq(self) -> np.ndarray:
        """θ_i = b^(−2i/d) for i = 0 … d/2−1 (transformers' ``inv_freq``), in float64."""
        return self.base ** (-np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim)

    @property
    def rope_type(self) -> str:
        """The checkpoint's own ``rope_type`` (``default`` when it has none)."""
        return str(self.rope_parameters.get("rope_type", "default"))

    @classmethod
    def from_config(cls, config: Any) -> RopeGeometry:
        """Read the geometry from a transformers ``PreTrainedConfig``.

        Raises:
            NoRotaryEmbeddingError: the model has no RoPE (GPT-2's learned positions, say).
            ConfigError: RoPE settings we cannot rescale (per-layer-type RoPE).
        """
        model_type = str(getattr(config, "model_type", "") or "")
        params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        params = dict(params or {})
        has_theta = params.get("rope_theta") is not None or hasattr(config, "rope_theta")
        if not params and not has_theta:
            raise NoRotaryEmbeddingError(
                "model",
                f"model_type '{model_type or '?'}' has no rotary position embedding (no "
                "rope_parameters, rope_scaling or rope_theta in its config)",
                "LongRoPE rescales RoPE frequencies; use a RoPE model (Llama, Mistral, Qwen2, "
                "Phi-3, Gemma, …)",
            )
        if "rope_type" not in params and "type" not in params and any(
            isinstance(v, dict) for v in params.values()
        ):
            raise ConfigError(
                "rope_parameters",
                f"per-layer-type RoPE ({sorted(params)}) is not supported",
                "use a model with a single RoPE setting",
            )
        if "rope_type" not in params and "type" in params:  # legacy rope_scaling
            params["rope_type"] = params["type"]
        params.setdefault("rope_type", "default")

        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        partial = params.get("partial_rotary_factor",
                             getattr(config, "partial_rotary_factor", None))
        rotary_dim = int(head_dim * (1.0 if partial is None else float(partial)))
        base = params.get("rope_theta", getattr(config, "rope_theta", None)) or DEFAULT_ROPE_THETA
        original = (
            params.get("original_max_position_embeddings")
            or getattr(config, "original_max_position_embeddings", None)
            or config.max_position_embeddings
        )
        return cls(
            head_dim=int(head_dim),
            rotary_dim=rotary_dim,
            base=float(base),
            original_length=int(original),
            model_type=model_type,
            rope_parameters=params,
        )
