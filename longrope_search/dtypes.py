"""The dtype vocabulary of specs and flags (torch-free, so specs validate without torch)."""

from typing import Literal

#: the names a spec or ``--dtype`` gives; ``auto`` picks by device (model.loading)
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
#: the short names users type (``--dtype bf16``), for the names of Dtype
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16",
                 "fp32": "float32", "f32": "float32", "float": "float32"}


def canonical_dtype(name: str) -> str:
    """``bf16`` → ``bfloat16``; any other name as it is (checked where it is used)."""
    return DTYPE_ALIASES.get(name, name)
