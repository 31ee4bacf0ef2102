"""Attention-factor policies: the m that multiplies cos and sin (logits scale by m²)."""

from __future__ import annotations

import math
from typing import Literal, get_args

from longrope_search.errors import ConfigError

Policy = Literal["none", "yarn", "su"]  # a job's attention_factor, when not a number
POLICIES: tuple[str, ...] = get_args(Policy)


def yarn_attention_factor(extension_ratio: float) -> float:
    """YaRN's temperature, m = 0.1·ln s + 1 (YaRN Eq. 22); 1 for s ≤ 1."""
    return 1.0 if extension_ratio <= 1 else 0.1 * math.log(extension_ratio) + 1.0


def su_attention_factor(extension_ratio: float, original_length: int) -> float:
    """LongRoPE's default ("su"), m = sqrt(1 + ln s / ln L); 1 for s ≤ 1."""
    if extension_ratio <= 1:
        return 1.0
    return math.sqrt(1.0 + math.log(extension_ratio) / math.log(original_length))


def attention_factor(policy: str | float, extension_ratio: float, original_length: int) -> float:
    """Resolve a policy (``"none"``, ``"yarn"``, ``"su"`` or an explicit number) to m."""
    if isinstance(policy, (int, float)) and not isinstance(policy, bool):
        if not math.isfinite(policy) or policy <= 0:
            raise ConfigError("attention_factor", f"must be > 0, got {policy}",
                              f"use a positive number or one of {POLICIES}")
        return float(policy)
    if policy == "none":
        return 1.0
    if policy == "yarn":
        return yarn_attention_factor(extension_ratio)
    if policy == "su":
        return su_attention_factor(extension_ratio, original_length)
    raise ConfigError("attention_factor", f"unknown policy {policy!r}",
                      f"use one of {POLICIES} or a positive number")
