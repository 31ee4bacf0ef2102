"""longrope-search: LongRoPE's evolutionary search for RoPE rescale factors.

``import longrope_search`` loads nothing heavy; :func:`apply_factors` (which needs torch and
the export layer) is imported on first use.
"""

from typing import Any

from longrope_search.errors import ConfigError, NoRotaryEmbeddingError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "apply_factors":  # PEP 562: only this name loads torch and the export layer
        from longrope_search.export import apply_factors

        return apply_factors
    raise AttributeError(f"module 'longrope_search' has no attribute {name!r}")


__all__ = ["ConfigError", "NoRotaryEmbeddingError", "__version__", "apply_factors"]
