"""Where the embedded default model and its documents live."""

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).parent / "data" / "embedded"
EMBEDDED_SEARCH_DOCS = EMBEDDED_MODEL / "documents" / "search"
EMBEDDED_HELDOUT_DOCS = EMBEDDED_MODEL / "documents" / "heldout"
