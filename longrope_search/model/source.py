"""Where a model is read from: a local Hugging Face folder, or one GGUF file.

Every ``from_pretrained`` of the package goes through :class:`ModelSource`, so a ``.gguf`` model
works wherever a folder does. For GGUF, transformers reads the config from the file's metadata,
builds the tokenizer from its vocabulary and dequantizes the weights on load (``gguf_file=``,
needs the ``gguf`` package); the file is checked first (architecture known to transformers,
every tensor of a type it can dequantize), so an unusable file fails in a second, not after
gigabytes were read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
from gguf.quants import _type_traits
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

from longrope_search.defaults import model_location
from longrope_search.errors import ConfigError

GGUF_SUFFIX = ".gguf"
#: Types transformers can load without dequantizing; the rest need a numpy dequantizer in gguf.
PLAIN_TYPES = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")


@dataclass(frozen=True)
class ModelSource:
    """A model on disk: ``path`` is a folder (``config.json``, weights, tokenizer) or a GGUF
    file."""

    path: Path

    @classmethod
    def of(cls, model: str | Path) -> ModelSource:
        """The source that ``model`` names (a folder, a ``.gguf`` file, ``embedded``, or
        ``package:NAME/FILE``), checked to exist and be readable without loading weights."""
        path = model_location(str(model))
        if cls(path).is_gguf:
            if not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "does not exist"
                raise ConfigError("model", f"{path} {what}",
                                  "point model at a local .gguf file or model folder")
            _check_gguf(path, path.stat().st_mtime_ns)
            return cls(path)
        if not path.is_dir():
            raise ConfigError("model", f"{path} is not a folder or a .gguf file",
                              "point model at a local Hugging Face model folder (config.json, "
                              "weights) or a .gguf file")
        if not (path / "config.json").is_file():
            raise ConfigError("model", f"{path} has no config.json",
                              "point model at the folder that save_pretrained wrote")
        return cls(path)

    @property
    def is_gguf(self) -> bool:
        """Whether the model is a GGUF file (else a Hugging Face folder)."""
        return self.path.suffix.lower() == GGUF_SUFFIX

    @property
    def name(self) -> str:
        """The model's name: the folder's, or the GGUF file's without its suffix."""
        return self.path.stem if self.is_gguf else self.path.name

    def _args(self, trust_remote_code: bool) -> tuple[Path, dict[str, Any]]:
        """``from_pretrained``'s folder and keywords."""
        if self.is_gguf:
            return self.path.parent, {"gguf_file": self.path.name}
        return self.path, {"trust_remote_code": trust_remote_code}

    def config(self, trust_remote_code: bool = False) -> Any:
        """The model's config as transformers reads it (no weights are read)."""
        if self.is_gguf:
            return _gguf_config(self.path, self.path.stat().st_mtime_ns)
        try:
            return AutoConfig.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except ValueError as e:
            raise ConfigError("model", f"cannot read {self.path / 'config.json'}: {e}",
                              "use a model type this transformers knows, or opt in to "
                              "trust_remote_code for a model folder you trust") from None

    def raw_config(self, trust_remote_code: bool = False) -> dict[str, Any]:
        """``config.json`` as written on disk; for GGUF the config transformers derives."""
        if self.is_gguf:
            return self.config(trust_remote_code).to_dict()
        return json.loads((self.path / "config.json").read_text())

    def tokenizer(self, trust_remote_code: bool = False) -> Any:
        """The model's tokenizer as transformers loads it (a GGUF's from its ``tokenizer.ggml.*``
        keys)."""
        folder, kwargs = self._args(trust_remote_code)
        try:
            return AutoTokenizer.from_pretrained(folder, **kwargs)
        except (ValueError, KeyError) as e:
            if not self.is_gguf:
                raise
            raise ConfigError("model", f"{self.path.name} carries no tokenizer transformers "
                              f"can build ({e})", "use a GGUF that llama.cpp's converter "
                              "wrote (it stores the tokenizer as tokenizer.ggml.*)") from None

    def model(self, trust_remote_code: bool = False, **kwargs: Any) -> Any:
        """``AutoModelForCausalLM.from_pretrained`` (GGUF weights dequantized to ``dtype``)."""
        folder, source_kwargs = self._args(trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(folder, **source_kwargs, **kwargs)


#: what gguf.GGUFReader raises on a damaged or hostile header (a huge tensor or key count, a
#: duplicate key, a truncated file)
GGUF_READ_ERRORS = (ValueError, OSError, KeyError, IndexError, OverflowError, struct.error,
                    MemoryError)


@lru_cache(maxsize=8)
def _check_gguf(path: Path, mtime_ns: int) -> None:
    """Refuse a file transformers cannot load: not GGUF, an unknown architecture, or a tensor
    type without a dequantizer. Reads the header only (memory-mapped)."""
    try:
        reader = gguf.GGUFReader(path)
    except GGUF_READ_ERRORS as e:
        raise ConfigError("model", f"{path} is not a GGUF file ({e})",
                          "give a .gguf model file or a model folder") from None
    if "general.architecture" not in reader.fields:
        raise ConfigError("model", f"{path.name} names no architecture (general.architecture "
                          "is missing)", "use a GGUF that llama.cpp's converter wrote")
    arch = reader.fields["general.architecture"].contents()
    architectures = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    if arch not in architectures:
        raise ConfigError("model", f"{path.name}: GGUF architecture {arch!r} is not one "
                          "transformers can load", "convert the model to a Hugging Face folder, "
                          f"or use one of {', '.join(architectures)}")
    known = set(PLAIN_TYPES) | {t.name for t in _type_traits}
    unknown = sorted({t.tensor_type.name for t in reader.tensors} - known)
    if unknown:
        raise ConfigError("model", f"{path.name} holds tensors of type {', '.join(unknown)}, "
                          "which cannot be dequantized here", "use a GGUF quantized as F16, "
                          "Q8_0, Q4_K or another type gguf.quants dequantizes")


@lru_cache(maxsize=8)
def _gguf_config(path: Path, mtime_ns: int) -> Any:
    """Reading a GGUF's config parses its whole metadata (the vocabulary too): seconds for a
    real model, so each file is read once."""
    try:
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError) as e:
        raise ConfigError("model", f"cannot read the config of {path.name}: {e}",
                          "use a GGUF that llama.cpp's converter wrote") from None


__all__ = ["GGUF_READ_ERRORS", "GGUF_SUFFIX", "ModelSource"]
