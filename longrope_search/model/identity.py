"""What a result records about the model and the software that made it: the model's
fingerprint (an export and the model it is applied to must agree on it) and the versions."""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import torch
import transformers

from longrope_search import __version__
from longrope_search.rope import RopeGeometry

# What identifies a checkpoint's architecture; max_position_embeddings is left out on purpose,
# since exporting changes it.
FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")


def model_fingerprint(config: Any) -> str:
    """A short hash of a transformers config's architecture and RoPE geometry: an export and the
    model it is applied to must agree on it."""
    geometry = RopeGeometry.from_config(config)
    facts = {k: getattr(config, k, None) for k in FINGERPRINT_KEYS}
    facts.update(rotary_dim=geometry.rotary_dim, rope_theta=geometry.base,
                 original_length=geometry.original_length)
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    return {"longrope_search": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
