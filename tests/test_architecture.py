"""The package's shape (issue 32): the top package loads only the rope math's needs, the search
core never reaches into the export or service layers, and a job's data path from the CLI to its
first Parquet row enters each search module once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import longrope_search.search.driver as driver_module
from longrope_search.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "longrope_search"
# the spec, the grid, an evaluation and the folder's layout are values every stage reads
VALUE_MODULES = {"job", "space", "trial", "jobdir"}


def test_importing_the_package_loads_no_optuna_pyarrow_or_pydantic() -> None:
    code = ("import sys, longrope_search; print(sorted(m for m in ('optuna', 'pyarrow', "
            "'pydantic', 'ray', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_search_module_imports_the_export_or_service_layers() -> None:
    outer = ("longrope_search.export", "longrope_search.gguf_export", "longrope_search.service",
             "longrope_search.llamacpp", "longrope_search.cli")
    found = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if n.startswith(outer))
             for p in (PACKAGE / "search").rglob("*.py")}
    assert {p: n for p, n in found.items() if n} == {}


class _RowWritten(Exception):
    pass


def _walk(job: Path) -> tuple[list[tuple[str, str]], int]:
    """(module, function) for every call that enters a search module from another one, until
    the first table is written: module-level functions and constructors, not the methods the
    loop calls per candidate (ask, tell, submit, wait, record), nor value modules; and how many
    times a plan was built."""
    walk: list[tuple[str, str]] = []
    plans = [0]

    def profile(frame, event, arg) -> None:
        if event != "call" or frame.f_back is None or written:
            return
        module = frame.f_globals.get("__name__", "")
        plans[0] += module == "longrope_search.search.plan" and frame.f_code.co_name == "plan_job"
        caller = frame.f_back.f_globals.get("__name__", "")
        if not module.startswith("longrope_search.search.") or caller == module:
            return
        short = module.removeprefix("longrope_search.search.").split(".")[0]
        code = frame.f_code
        method = "." in code.co_qualname and not code.co_qualname.endswith("__init__") \
            and "<locals>" not in code.co_qualname
        inside = caller.startswith("longrope_search.search.strategies") and short in (
            "strategies", "operators")  # a strategy's own helpers
        if short in VALUE_MODULES or method or inside or code.co_name.startswith("<") \
                or "__create_fn__" in code.co_qualname:
            return
        walk.append((short, code.co_qualname))

    write = driver_module.write_generation

    written: list[bool] = []

    def write_then_stop(*args, **kwargs) -> None:
        write(*args, **kwargs)
        written.append(True)  # the walk ends here (the unwinding is not part of it)
        raise _RowWritten

    driver_module.write_generation = write_then_stop  # the loop's one writer
    sys.setprofile(profile)
    try:
        with pytest.raises(_RowWritten):
            main(["run", str(job), "--no-progress"])
    finally:
        sys.setprofile(None)
        driver_module.write_generation = write
    return walk, plans[0]


def test_a_jobs_walk_enters_each_search_module_once(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "walk", "extension_ratio": 8, "k_documents": 2, "results_dir": str(tmp_path),
        "scoring": {"dtype": "float32"}, "search": {"population": 4, "mutations": 2,
                                                    "crossovers": 2, "top_k": 2,
                                                    "generations": 2}}))
    walk, plans = _walk(job)
    stays = [m for i, (m, _) in enumerate(walk) if i == 0 or walk[i - 1][0] != m]
    # the spec's validation consults the strategies' table before the walk starts
    stays = stays[stays.index("run"):]
    for module in ("run", "plan", "evaluator", "fitness", "driver", "ledger", "tables"):
        assert stays.count(module) == 1, (module, walk)
    order = [stays.index(m) for m in ("run", "plan", "evaluator", "fitness", "driver")]
    assert order == sorted(order), walk
    assert plans == 1 and ("plan", "check") in walk  # checked once, then used
    assert "outcome" not in stays  # a finished job's files come after the first row
