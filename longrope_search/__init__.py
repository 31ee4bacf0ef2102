"""longrope-search: LongRoPE's evolutionary search for RoPE rescale factors."""

__version__ = "0.1.0"

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError
from longrope_search.export import apply_factors

__all__ = ["ConfigError", "NoRotaryEmbeddingError", "__version__", "apply_factors"]
