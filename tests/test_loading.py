"""The loader's choices that depend on the machine: the dtype that ``auto`` means."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longrope_search.errors import ConfigError
from longrope_search.model import loading

EPYC = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("text, native", [(EPYC, False), (SAPPHIRE, True), (GRAVITON, True),
                                          ("", False)])
def test_native_bf16_is_read_from_cpu_flags(tmp_path: Path, text: str, native: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert loading.cpu_has_native_bf16(info) is native
    assert loading.cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_avoids_emulated_bf16(monkeypatch, native, expected) -> None:
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    assert loading.resolve_dtype("auto", torch.device("cpu")) == expected
    assert loading.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # as asked


def test_unknown_dtype_names_the_field() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        loading.resolve_dtype("float8", torch.device("cpu"))
