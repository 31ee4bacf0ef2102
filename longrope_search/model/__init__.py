"""The transformers edge: load a local model folder and rescale its RoPE in place."""

from longrope_search.model.loading import LoadedModel, load_model, read_geometry
from longrope_search.model.patch import (
    RescaledRotaryEmbedding,
    apply_candidates,
    find_rotary_embedding,
    rescaled,
    restore_rope,
)

__all__ = [
    "LoadedModel",
    "RescaledRotaryEmbedding",
    "apply_candidates",
    "find_rotary_embedding",
    "load_model",
    "read_geometry",
    "rescaled",
    "restore_rope",
]
