"""Read rescale factors from a JSON file into a :class:`Candidate`.

Accepted shapes (the first that matches wins):

* longrope-search's own record: ``{"lambdas": [...], "n_hat": 0, "attention_factor": 1.1}``;
* a transformers config or fragment: ``{"rope_parameters": {...}}``, ``{"rope_scaling": {...}}``
  or the block itself, ``{"rope_type": "longrope", "long_factor": [...], ...}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from longrope_search.errors import ConfigError
from longrope_search.rope import Candidate, RopeGeometry, su_attention_factor


def _rope_block(data: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data if "long_factor" in data else None


def load_factor_file(path: str | Path, geometry: RopeGeometry, option: str = "factors"
                     ) -> Candidate:
    """Validated candidate from a factor file, for a model with ``geometry``; ``option`` is
    what the user called the file (``factors``, ``seed_files[2]``), for the errors.

    Raises:
        ConfigError: missing file, invalid JSON, no factors in it, wrong vector length,
            non-finite or non-positive values — naming the field and the fix.
    """
    path = Path(path)
    field = f"{option} ({path.name})"
    if path.is_dir():
        raise ConfigError(option, f"{path} is a directory", "give the path of a factor JSON file")
    if not path.is_file():
        raise ConfigError(option, f"{path} does not exist", "give the path of a factor JSON file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(field, f"not valid JSON ({e})", "export the file again") from None
    if not isinstance(data, dict):
        raise ConfigError(field, "top level must be a JSON object", "export the file again")
    name = path.stem
    if "lambdas" in data:
        return Candidate.create(data["lambdas"], num_pairs=geometry.num_pairs,
                                n_hat=data.get("n_hat", 0),
                                attention_factor=data.get("attention_factor", 1.0), name=name)
    block = _rope_block(data)
    if block is None or "long_factor" not in block:
        raise ConfigError(field, "has neither 'lambdas' nor a longrope 'long_factor'",
                          "give a longrope-search export or a config with rope_type longrope")
    original = block.get("original_max_position_embeddings") or geometry.original_length
    factor = block.get("factor") or (
        data.get("max_position_embeddings", original) / original)
    m = block.get("attention_factor")
    if m is None:
        m = su_attention_factor(float(factor), int(original))
    if not isinstance(m, (int, float)) or not math.isfinite(m):
        raise ConfigError(f"{field}.attention_factor", f"{m!r} is not a number",
                          "remove it or give a positive number")
    # n̂ has no key in any engine's block; this package's exports keep it beside the block
    n_hat = (data.get("longrope_search") or {}).get("n_hat", 0)
    return Candidate.create(block["long_factor"], num_pairs=geometry.num_pairs, n_hat=n_hat,
                            attention_factor=float(m), name=name, allow_below_one=True)
