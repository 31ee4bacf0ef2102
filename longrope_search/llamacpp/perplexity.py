"""Perplexity computed by llama.cpp itself (llama-cpp-python), on token ids we give it.

The same documents and the same convention as the scorer (mean NLL of tokens 1…n−1 given
their prefix, equal weight per document), so a GGUF's perplexity here compares one to one with
the search's. The KV cache is kept in float32 so that a float32 GGUF differs from transformers
only by arithmetic order.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longrope_search.errors import ConfigError

#: How llama.cpp is told to scale RoPE: ``file`` as the GGUF says (an export's factor tables),
#: ``none`` not at all, ``pi``/``yarn`` llama.cpp's own linear and YaRN scaling by s.
ROPE_MODES = ("file", "none", "pi", "yarn")


def require_llama_cpp() -> None:
    """Refuse clearly when llama-cpp-python is not installed (it is an optional extra)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError("llama_cpp", "llama-cpp-python is not installed",
                          "pip install -e '.[llamacpp]' (it builds llama.cpp from source: about "
                          "20 minutes on 2 cores)")


def rope_settings(mode: str, extension_ratio: float, original_length: int) -> dict[str, Any]:
    """``Llama(...)`` keywords for a rope mode (llama.cpp's ``--rope-scaling``,
    ``--rope-scale``, ``--yarn-orig-ctx``)."""
    import llama_cpp  # an optional extra: loaded only where llama.cpp runs

    if mode not in ROPE_MODES:
        raise ConfigError("rope", f"unknown llama.cpp rope mode {mode!r}",
                          f"use one of {ROPE_MODES}")
    if mode == "file":
        return {}
    if mode == "none":
        return {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE}
    kind = {"pi": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
            "yarn": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN}[mode]
    return {"rope_scaling_type": kind, "rope_freq_scale": 1.0 / extension_ratio,
            "yarn_orig_ctx": original_length}


def document_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean NLL of ids[1:] under logits[:-1]; logits (n, vocab), ids (n,)."""
    logits = logits[:-1].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(ids) - 1), ids[1:]]))


def llamacpp_ppl(gguf: str | Path, documents: Sequence[Sequence[int]], *, rope: str = "file",
                 extension_ratio: float = 1.0, original_length: int = 0,
                 threads: int | None = None, context: int | None = None
                 ) -> tuple[float, list[float]]:
    """(perplexity, per-document mean NLL) of ``documents`` (token ids, all one length n) under
    the GGUF model, in a context of ``context`` tokens (default n; a deployment allocates its
    target length, and llama.cpp chooses factor tables by it)."""
    from llama_cpp import GGML_TYPE_F32, Llama  # the optional extra, as above

    n = len(documents[0])
    if any(len(d) != n for d in documents):
        raise ConfigError("documents", "documents of different lengths",
                          "truncate every document to the evaluated length")
    llm = Llama(model_path=str(gguf), n_ctx=max(n, context or n), n_batch=n, n_ubatch=min(n, 512),
                n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, seed=0,
                **rope_settings(rope, extension_ratio, original_length))
    try:
        nll = []
        for ids in documents:
            llm.reset()
            llm.eval(list(map(int, ids)))
            nll.append(document_nll(np.asarray(llm.scores[:n]), np.asarray(ids)))
    finally:
        llm.close()
    return math.exp(sum(nll) / len(nll)), nll


__all__ = ["ROPE_MODES", "document_nll", "llamacpp_ppl", "rope_settings"]
