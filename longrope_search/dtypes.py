"""The loading vocabulary of specs and flags: dtypes and attention kernels (torch-free, so
specs validate without torch)."""

from typing import Literal, get_args

#: the names a spec or ``--dtype`` gives; ``auto`` picks by device (model.loading)
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
#: the short names users type (``--dtype bf16``), for the names of Dtype
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16",
                 "fp32": "float32", "f32": "float32", "float": "float32"}


#: transformers' attention kernels a user may pick (``scoring.attn_implementation``)
AttnImplementation = Literal["sdpa", "flash_attention_2", "eager", "flex_attention"]
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)


def canonical_dtype(name: str) -> str:
    """``bf16`` → ``bfloat16``; any other name as it is (checked where it is used)."""
    return DTYPE_ALIASES.get(name, name)
