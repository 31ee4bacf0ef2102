"""A Hugging Face Llama or Qwen2 folder written as GGUF, the way llama.cpp's converter does.

For models that llama.cpp's ``convert_hf_to_gguf.py`` would convert but that are not on hand
here (the embedded model, the project's Qwen2 model): same tensor names (gguf's
``TensorNameMap``), same metadata keys, and the same Q/K row order. llama.cpp's Llama rotates
interleaved pairs (x₂ᵢ, x₂ᵢ₊₁) while transformers rotates halves (xᵢ, xᵢ₊d/2), so the rows of
``q_proj`` and ``k_proj`` are permuted per head; transformers' GGUF loader undoes it. Qwen2 runs
in llama.cpp's NeoX (halves) mode and is written as is. The vocabulary must be byte-level BPE
(GPT-2 style), written as ``tokenizer.ggml.model = gpt2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from longrope_search.errors import ConfigError
from longrope_search.io import atomic_write

#: model_type → (gguf architecture, whether Q/K rows are permuted to interleaved pairs)
ARCHITECTURES = {"llama": ("LLAMA", True), "qwen2": ("QWEN2", False)}
#: --dtype → (tensor type of every 2-D weight, file type); norms and biases stay float32
DTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


def convert_to_gguf(folder: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """Write ``out``, the GGUF of the model in ``folder`` (atomically)."""
    folder, out = Path(folder), Path(out)
    config = json.loads((folder / "config.json").read_text())
    arch_name, permute = _architecture(config)
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"unknown GGUF dtype {dtype!r}", f"use one of {list(DTYPES)}")
    tensors = load_file(folder / "model.safetensors")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())

    def write(tmp: Path) -> None:
        arch = gguf.MODEL_ARCH[arch_name]
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        _metadata(writer, config, folder.name, gguf.LlamaFileType[DTYPES[dtype][1]])
        _vocabulary(writer, tokenizer, config)
        for name, data in _tensors(tensors, config, arch, permute):
            _add(writer, name, data, gguf.GGMLQuantizationType[DTYPES[dtype][0]])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out, write)
    return out


def _architecture(config: dict[str, Any]) -> tuple[str, bool]:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError("model", f"model_type {model_type!r} cannot be converted here",
                          f"use llama.cpp's convert_hf_to_gguf.py (here: {list(ARCHITECTURES)})")
    return ARCHITECTURES[model_type]


def _metadata(writer: Any, config: dict[str, Any], name: str, file_type: Any) -> None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _vocabulary(writer: Any, tokenizer: dict[str, Any], config: dict[str, Any]) -> None:
    """Byte-level BPE as ``gpt2``: tokens in id order, merges as ``"a b"``, special tokens as
    control tokens."""
    model = tokenizer["model"]
    if model.get("type") != "BPE" or (tokenizer.get("pre_tokenizer") or {}).get("type") != \
            "ByteLevel":
        raise ConfigError("model", "only byte-level BPE vocabularies are converted here",
                          "use llama.cpp's convert_hf_to_gguf.py")
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    tokens = [""] * config["vocab_size"]
    for text, i in vocab.items():
        tokens[i] = text
    special = {t["id"] for t in tokenizer["added_tokens"] if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
             for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.get("bos_token_id") or 0)
    writer.add_eos_token_id(config.get("eos_token_id") or 0)
    writer.add_add_bos_token(False)


def _tensors(tensors: dict[str, np.ndarray], config: dict[str, Any], arch: Any,
             permute: bool) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, data) for every weight; the tied ``lm_head`` is left to ``token_embd``."""
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    out = []
    for hf_name, data in tensors.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError("model", f"tensor {hf_name} has no GGUF name",
                              "use llama.cpp's convert_hf_to_gguf.py")
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _interleave(data, heads if "q_proj" in hf_name else kv_heads)
        out.append((name, np.ascontiguousarray(data, dtype=np.float32)))
    return out


def _interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from halves order to interleaved pairs (llama.cpp's ``permute``):
    row (h, j, r) of shape (heads, 2, d/4…) moves to (h, r, j)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _add(writer: Any, name: str, data: np.ndarray, qtype: Any) -> None:
    if data.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data)
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


__all__ = ["ARCHITECTURES", "DTYPES", "convert_to_gguf"]
