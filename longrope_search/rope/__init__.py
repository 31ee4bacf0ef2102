"""RoPE rescaling math: pure functions over numpy, no model needed."""

from longrope_search.rope.attention import (
    attention_factor,
    su_attention_factor,
    yarn_attention_factor,
)
from longrope_search.rope.candidate import Candidate
from longrope_search.rope.geometry import RopeGeometry
from longrope_search.rope.seeds import (
    SEED_NAMES,
    config_long_factor,
    dynamic_ntk_lambdas,
    llama3_lambdas,
    ntk_lambdas,
    pi_lambdas,
    rescale_ratio,
    seed_candidate,
    yarn_correction_range,
    yarn_lambdas,
)

__all__ = [
    "SEED_NAMES",
    "Candidate",
    "RopeGeometry",
    "attention_factor",
    "config_long_factor",
    "dynamic_ntk_lambdas",
    "llama3_lambdas",
    "ntk_lambdas",
    "pi_lambdas",
    "rescale_ratio",
    "seed_candidate",
    "su_attention_factor",
    "yarn_attention_factor",
    "yarn_correction_range",
    "yarn_lambdas",
]
