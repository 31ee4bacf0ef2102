"""The device check (bench/gpu_check.py) in --tiny mode on the CPU: every part runs and writes
its figures."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return _module()


@pytest.fixture(scope="module")
def tiny_run(gpu_check: ModuleType, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu")
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    (js,) = out.glob("gpu_check_*.json")
    (md,) = out.glob("gpu_check_*.md")
    assert js.stem == md.stem == "gpu_check_cpu_tiny"
    return json.loads(js.read_text()), md.read_text()


def test_tiny_check_measures_every_part(tiny_run: tuple[dict[str, Any], str]) -> None:
    figures, text = tiny_run
    env = figures["environment"]
    assert figures["mode"] == "tiny" and env["device"] in text and "--tiny" in env["command"]
    assert env["torch"] in text and env["transformers"] in text

    rows = figures["scorer"]["rows"]
    assert {r["attn"] for r in rows} == {"sdpa", "eager"}
    for attn in ("sdpa", "eager"):
        mine = {r["length"]: r for r in rows if r["attn"] == attn}
        assert sorted(mine) == [64, 128, 256, 512]
        for length, r in mine.items():
            assert r["status"] == "ok", r
            assert r["seconds"] > 0 and r["tokens"] == length
            assert r["tflops"] > 0 and r["mfu"] is None  # no known peak on a CPU
            assert math.isfinite(r["ppl"])
    sdpa = {r["length"]: r["ppl"] for r in rows if r["attn"] == "sdpa"}
    assert all(math.isclose(r["ppl"], sdpa[r["length"]], rel_tol=1e-4) for r in rows)

    g = figures["gradient"]
    assert g["status"] == "ok" and g["length"] == 128 and g["gradient_finite"]
    assert math.isfinite(g["step_forwards"]) and g["step_forwards"] > 0
    assert g["nll_difference"] < 1e-4
    assert any(t["target"].startswith("gradient step") and t["result"] in ("pass", "miss")
               for t in figures["targets"])

    s = figures["search"]
    assert s["status"] == "ok" and s["strategy"] == "memetic" and s["extension_ratio"] == 8
    ppl = {r["method"]: r["ppl"] for r in s["comparison"]}
    methods = ("best", "unmodified", "pi", "ntk", "yarn")
    assert set(ppl) == set(methods)
    assert all(math.isfinite(v) for v in ppl.values())
    by_length = {(r["method"], r["length"]) for r in s["ppl_by_length"]}
    assert by_length == {(m, n) for m in methods for n in (64, 128, 256, 512, 1024)}
    assert "| best |" in text and "| yarn |" in text


def test_peaks_and_flops(gpu_check: ModuleType) -> None:
    peak = gpu_check.peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989 and peak("NVIDIA H100 PCIe") == 756
    assert peak("NVIDIA H200") == 989 and peak("NVIDIA A100-SXM4-80GB") == 312
    assert peak("NVIDIA L40S") == 362 and peak("NVIDIA GeForce RTX 4090") == 165
    assert peak("cpu (x86_64)") is None and peak("Tesla T4") is None
    import torch

    model = gpu_check.build_llama(gpu_check.llama_config(True, "sdpa"), torch.device("cpu"),
                                  torch.float32)
    weights = sum(p.numel() for p in model.model.layers.parameters()) + model.lm_head.weight.numel()
    assert gpu_check.forward_flops(model, 100).total == 2 * weights * 100 + 2 * 2 * 64 * 100**2
