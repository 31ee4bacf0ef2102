"""Exported factors checked inside llama.cpp: a search on the embedded model (read as GGUF),
exported into the GGUF, gains over llama.cpp's own YaRN what the search says it gains.

Needs llama-cpp-python (CI builds it once, see .ci/run); skipped without it unless
LONGROPE_REQUIRE_LLAMACPP=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.llamacpp.convert import convert_to_gguf
from longrope_search.search.job import job_from_dict
from longrope_search.search.run import run_job

ROOT = Path(__file__).resolve().parents[1]

try:
    import llama_cpp  # noqa: F401
except ImportError as e:
    if os.environ.get("LONGROPE_REQUIRE_LLAMACPP") == "1":
        raise RuntimeError("LONGROPE_REQUIRE_LLAMACPP=1 but llama-cpp-python is missing") from e
    pytest.skip("llama-cpp-python is not installed (pip install -e '.[llamacpp]')",
                allow_module_level=True)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, Path]:
    """A short 8× search whose model is the embedded model's float32 GGUF."""
    root = tmp_path_factory.mktemp("llamacpp")
    model = convert_to_gguf(EMBEDDED_MODEL, root / "embedded.gguf")
    spec = job_from_dict({
        "name": "cpp", "model": str(model), "extension_ratio": 8, "k_documents": 2,
        "results_dir": str(root / "results"), "space": {"n_hat": [0]},
        "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 6, "mutations": 3, "crossovers": 3, "top_k": 3,
                      "generations": 2}})
    run_job(spec, progress=False)
    return spec.job_dir, model


def test_llamacpp_sees_the_gain_the_search_reported(searched, tmp_path):
    from longrope_search.llamacpp.check import check_gguf_export

    job, model = searched
    report = check_gguf_export(job, model, tmp_path / "out.gguf", tolerance=0.2)
    best = json.loads((job / "best.json").read_text())
    engine, ours = report["llama.cpp"], report["transformers"]
    assert ours["factors"] == pytest.approx(best["search_ppl"], rel=1e-4)  # what the search saw
    # llama.cpp's unscaled and YaRN runs are the scorer's, so the baselines are the same ones
    assert engine["none"] == pytest.approx(ours["none"], rel=2e-3)
    assert engine["yarn"] == pytest.approx(ours["yarn"], rel=2e-3)
    assert engine["factors"] == pytest.approx(ours["factors"], rel=2e-3)
    assert engine["factors"] < engine["none"]
    assert report["agrees"] and report["difference_pp"] <= 0.2, report
    # by length, in a context allocated for L': what llama.cpp users get on short prompts too
    comparison = json.loads((job / "comparison.json").read_text())
    assert list(report["by_length"]) == [str(n) for n in comparison["lengths"]]
    for row in report["by_length"].values():
        assert row["comparison"] == pytest.approx(row["transformers"], rel=1e-4)  # both fp32
        assert row["llama.cpp"] == pytest.approx(row["transformers"], rel=2e-3)


def test_the_script_reports_and_fails_on_disagreement(searched, tmp_path):
    job, model = searched
    script = [sys.executable, str(ROOT / "scripts" / "check_export.py"), "gguf", str(job),
              str(model), "-o", str(tmp_path / "out.gguf"), "--json", str(tmp_path / "r.json")]
    done = subprocess.run(script, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "gain over YaRN" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["agrees"]
    strict = subprocess.run([*script, "--tolerance", "-1"], capture_output=True, text=True,
                            timeout=600)
    assert strict.returncode == 1  # a gap wider than the tolerance is a failure
