"""longrope-search: LongRoPE's evolutionary search for RoPE rescale factors."""

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError

__version__ = "0.1.0"
__all__ = ["ConfigError", "NoRotaryEmbeddingError", "__version__"]
