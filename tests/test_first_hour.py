"""What a new user hits in the first hour (issue 30): the default results folder, reading a
job folder without a server, one process per job and per results folder, the modes of the
files written, and messages that say what to do."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
import yaml

import longrope_search.search.evaluator as evaluator_module
from longrope_search.cli import main
from longrope_search.io import atomic_write, write_json
from longrope_search.search.jobdir import JobDir, running
from longrope_search.service.jobs import JobManager

TINY = {"name": "h", "extension_ratio": 4, "k_documents": 2,
        "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}


def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("weights were loaded before the run was refused")

    monkeypatch.setattr(evaluator_module, "load_model", refuse)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder where `run configs/x.yaml` (no --results-dir, no results_dir) has finished."""
    home = tmp_path_factory.mktemp("home")
    (home / "x.yaml").write_text(yaml.safe_dump(TINY))
    cwd = Path.cwd()
    os.chdir(home)
    try:
        assert main(["run", "x.yaml", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return home


def test_run_writes_to_runs_by_default_never_results(finished: Path) -> None:
    assert (finished / "runs" / "h" / "best.json").is_file()
    assert not (finished / "results").exists()


def test_a_name_clash_is_refused_before_the_weights_load(finished, monkeypatch, capsys) -> None:
    monkeypatch.chdir(finished)
    no_weights(monkeypatch)
    changed = {**TINY, "search": {**TINY["search"], "generations": 2}}
    (finished / "y.yaml").write_text(yaml.safe_dump(changed))
    assert main(["run", "y.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: name") and "already exists" in err and "runs/h" in err


def test_export_status_and_jobs_right_after_run_need_no_server(finished, monkeypatch,
                                                               capsys) -> None:
    monkeypatch.chdir(finished)
    monkeypatch.delenv("LONGROPE_SEARCH_URL", raising=False)
    best = json.loads((finished / "runs" / "h" / "best.json").read_text())
    assert main(["export", "h", "--format", "hf"]) == 0
    hf = json.loads(capsys.readouterr().out)
    assert hf["rope_parameters"]["long_factor"] == pytest.approx(best["lambdas"])
    assert main(["status", "h"]) == 0
    assert "finished" in capsys.readouterr().out
    assert main(["jobs", "--server", "http://127.0.0.1:9"]) == 1  # a server named: asked
    assert "--results-dir" in capsys.readouterr().err  # the error names the way out
    free = _free_port()
    monkeypatch.setattr("longrope_search.service.client.DEFAULT_URL", f"http://127.0.0.1:{free}")
    assert main(["jobs"]) == 0  # no server answers: the default folder
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "jobs in runs:" and out[1].split()[:3] == ["name", "state", "generation"]
    assert out[2].split()[:2] == ["h", "finished"]


def test_jobs_says_when_there_are_none(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["jobs", "--results-dir", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == f"no jobs in {tmp_path / 'empty'}"


def test_a_second_run_of_a_running_job_is_refused_before_weights(finished, monkeypatch,
                                                                 capsys) -> None:
    monkeypatch.chdir(finished)
    no_weights(monkeypatch)
    job = JobDir(finished / "runs" / "h")
    (job.path / "best.json").rename(job.path / "best.json.kept")  # an unfinished job again
    try:
        with running(job):  # another process would hold it; a second descriptor conflicts too
            assert main(["status", "h"]) == 0
            assert " running " in capsys.readouterr().out  # the lock says it runs
            assert main(["run", "x.yaml", "--no-progress"]) == 2
    finally:
        (job.path / "best.json.kept").rename(job.path / "best.json")
    err = capsys.readouterr().err
    assert "is running in another process" in err and f"pid {os.getpid()}" in err
    assert "run the same command again" in err


def test_a_second_server_on_a_folder_or_a_port_starts_nothing(tmp_path, monkeypatch,
                                                              capsys) -> None:
    """A queued job in the folder: neither a refused second server nor a busy port runs it."""
    runs = tmp_path / "runs"
    (runs / "q").mkdir(parents=True)
    (runs / "q" / "job.yaml").write_text(yaml.safe_dump({**TINY, "name": "q"}))
    write_json(runs / "q" / "state.json", {"state": "queued", "progress": {}})
    ran = []
    first = JobManager(runs, ran.append)  # holds the folder
    try:
        first.wait("q", timeout=30)
        write_json(runs / "q" / "state.json", {"state": "queued", "progress": {}})
        ran.clear()
        with pytest.raises(Exception, match="served by another server") as err:
            JobManager(runs, ran.append)
        assert getattr(err.value, "field", None) == "results-dir"
    finally:
        first.close()
    no_weights(monkeypatch)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--results-dir", str(runs)]) == 2
    assert "error: port" in capsys.readouterr().err
    assert ran == [] and not (runs / "q" / "ledger.journal").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_written_get_the_umask_s_mode(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.json", lambda p: p.write_text("{}"))
        plain = tmp_path / "plain"
        plain.write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) \
        == 0o666 & ~umask


def test_the_token_is_named_where_a_user_needs_it() -> None:
    from longrope_search.service.cli import banner

    text = banner("127.0.0.1", 8321, Path("runs"), "s3cret")
    assert "/dashboard/?token=<TOKEN>" in text and "Authorization: Bearer" in text
    assert "s3cret" not in text and "token" not in banner("127.0.0.1", 8321, Path("r"), None)


def test_a_401_says_how_to_send_the_token(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app

    manager = JobManager(tmp_path / "runs", lambda job: None)
    try:
        detail = TestClient(create_app(manager, token="t")).get("/api/jobs").json()["detail"]
    finally:
        manager.close()
    assert "Authorization: Bearer <TOKEN>" in detail and "?token=<TOKEN>" in detail


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_obvious_query_on_the_tables_gives_the_job_s_best(tmp_path: Path) -> None:
    """A committed job of schema version 3 (pruned rows with partial ppl, parent rows, Hive
    partitions) moved to version 4: ``t[t.new].ppl.min()`` is the best, ``generation`` an int,
    and every report reads the same before and after."""
    import shutil

    import pandas as pd

    from longrope_search.search.tables import migrate
    from longrope_search.service import reports

    job = tmp_path / "embedded-8x-main"
    shutil.copytree(Path(__file__).parents[1] / "results" / "embedded-8x-main", job)
    before = (reports.generation_summaries(job), reports.best(job, 32), reports.candidates(job))
    old = pd.read_parquet(job / "generations")
    assert old[old.status == "pruned"].ppl.min() < old[old.status == "ok"].ppl.min()  # the trap

    assert migrate(JobDir(job)) == old.generation.nunique()
    assert not JobDir(job).legacy_tables() and migrate(JobDir(job)) == 0
    t = pd.read_parquet(job / "generations")
    assert pd.api.types.is_integer_dtype(t.generation) and len(t) == len(old)
    best = json.loads((job / "best.json").read_text())
    assert t[t.new].ppl.min() == pytest.approx(best["search_ppl"])
    pruned = t[t.status == "pruned"]
    assert pruned.ppl.isna().all() and pruned.partial_ppl.notna().all()
    assert (~t.new).sum() == (t.operator == "parent").sum() > 0
    assert (reports.generation_summaries(job), reports.best(job, 32),
            reports.candidates(job)) == before


def test_a_new_job_s_tables_are_schema_4(finished: Path) -> None:
    import duckdb
    import pandas as pd

    t = pd.read_parquet(finished / "runs" / "h" / "generations")
    assert sorted(t.generation.unique()) == [0, 1] and t.stage.isna().all()
    assert t[t.status != "ok"].ppl.isna().all()
    glob = str(finished / "runs" / "h" / "generations" / "**" / "*.parquet")
    kinds = duckdb.sql(f"select distinct typeof(generation) from '{glob}'").fetchall()
    assert kinds == [("INTEGER",)]


def test_the_ledger_is_an_optuna_study_as_the_readme_says(finished: Path) -> None:
    import optuna
    import pandas as pd
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = finished / "runs" / "h" / "ledger.journal"
    study = optuna.load_study(study_name="h", storage=JournalStorage(JournalFileBackend(str(path))))
    t = pd.read_parquet(finished / "runs" / "h" / "generations")
    assert len(study.trials) == t.new.sum() > 0
    assert study.best_value == pytest.approx(t[t.new].mean_nll.min())


def test_original_length_overridden_on_purpose_and_the_header_says_l(tmp_path, capsys) -> None:
    """A contradicting L is refused (test_hostile_inputs); with override_original_length the
    job runs on that L, and the header says L and L'."""
    from longrope_search.search.job import job_from_dict
    from longrope_search.search.plan import plan_job

    spec = job_from_dict({**TINY, "original_length": 64, "override_original_length": True,
                          "results_dir": str(tmp_path)})
    plan = plan_job(spec)
    assert (plan.original_length, plan.target_length) == (64, 256)
    assert plan.geometry.original_length == 64  # the seeds' ramps are built on it
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"],
                                                            "generations": 0}}))
    main(["run", str(config), "--results-dir", str(tmp_path / "r"), "--no-progress"])
    assert "job h: L = 128 → L' = 512 tokens, " in capsys.readouterr().err


def test_eval_refuses_short_documents_naming_the_flag_before_weights(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    import longrope_search.model as model_module

    def refuse(*_a, **_k):
        raise AssertionError("weights were loaded before the documents were checked")

    monkeypatch.setattr(model_module, "load_model", refuse)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("too short\n")
    assert main(["eval", "--documents", str(tmp_path / "docs"), "--k", "1",
                 "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: documents: ")


def test_ctrl_c_during_run_says_how_to_resume_and_the_rerun_says_it_resumes(tmp_path) -> None:
    """SIGINT in the middle of `run`: a short message with the command to rerun, exit 130; the
    rerun says it resumes, and its bar's rate leaves the replayed ledger out."""
    import re
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"],
                                                            "generations": 6},
                                      "budget": {"tokens": 10**6}}))
    command = [sys.executable, "-m", "longrope_search.cli", "run", str(config)]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    ledger = tmp_path / "runs" / "h" / "ledger.journal"
    deadline = time.time() + 300
    while (not ledger.exists() or ledger.read_text().count("\n") < 6) \
            and time.time() < deadline:  # a few finished evaluations (a journal line each)
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    tail = err.strip().splitlines()[-1]
    assert tail.startswith("interrupted: every finished evaluation is in the job's ledger; run")
    assert "Traceback" not in err and "again to resume" in tail

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"h: resuming, \d+ evaluations from the ledger replayed", rerun.stderr)

    def fastest(text: str) -> float:
        units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}
        rates = [float(v) * units[u] for v, u in re.findall(r"([\d.]+)([kMG]?)tok/s", text)]
        return max(rates, default=0.0)

    assert 0 < fastest(rerun.stderr) < 20 * max(fastest(err), 1.0)


def test_the_end_line_says_which_budget_ended_the_job(tmp_path, capsys) -> None:
    """The last line names the budget that ended the search (and best.json keeps it): the
    candidate budget of `generations`, or a token budget that runs out first."""
    memetic = {**TINY, "strategy": "memetic", "search": {**TINY["search"],
                                                             "generations": 3},
               "strategy_options": {"steps": 2, "polish": 1, "every": 1}}
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump(memetic))
    assert main(["run", str(config), "--results-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ended: candidate budget spent (" in out and "16 of 16 candidates)" in out
    best = json.loads((tmp_path / "h" / "best.json").read_text())
    assert best["ended"] == "candidate budget spent"

    config.write_text(yaml.safe_dump({**memetic, "name": "t", "budget": {"tokens": 4096}}))
    assert main(["run", str(config), "--results-dir", str(tmp_path), "--no-progress"]) == 0
    assert "ended: token budget spent (" in capsys.readouterr().out


def test_check_export_without_llama_cpp_says_how_to_install(tmp_path, monkeypatch,
                                                             capsys) -> None:
    import importlib.util
    import runpy
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["check_export.py", "gguf", str(tmp_path), "m.gguf",
                                      "-o", str(tmp_path / "x.gguf")])
    script = Path(__file__).parents[1] / "scripts" / "check_export.py"
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: llama_cpp: llama-cpp-python is not installed")
    assert "pip install -e '.[llamacpp]'" in err


def test_evaluations_reach_the_api_before_their_generation_ends(tmp_path) -> None:
    """A job stopped after 3 evaluations of generation 0 has no table yet: its ledger's
    evaluations are its candidates, its best and a live generation in the API."""
    from fastapi.testclient import TestClient

    from longrope_search.search.job import job_from_dict
    from longrope_search.search.run import run_search
    from longrope_search.service.app import create_app

    spec = job_from_dict({**TINY, "search": {**TINY["search"], "population": 8,
                                                 "top_k": 4}, "results_dir": str(tmp_path)})

    def stop(progress: dict) -> None:
        if progress["evaluations"] >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(spec, progress=False, on_progress=stop)
    assert JobDir(tmp_path / "h").tables() == []
    manager = JobManager(tmp_path, lambda job: None)
    try:
        client = TestClient(create_app(manager))
        cands = client.get("/api/jobs/h/candidates").json()
        best = client.get("/api/jobs/h/best").json()
        gens = client.get("/api/jobs/h/generations").json()
        summary = client.get("/api/jobs/h").json()
    finally:
        manager.close()
    assert len(cands["candidate_id"]) == 3 and best["candidate_id"] in cands["candidate_id"]
    ok = [p for p, s in zip(cands["ppl"], cands["status"], strict=True) if s == "ok"]
    assert best["ppl"] == pytest.approx(min(ok)) and not best["final"]
    assert gens == [{**gens[0], "generation": 0, "new": 3, "live": True}]
    assert summary["candidates"] == 3 and summary["best_ppl"] == pytest.approx(min(ok))


def test_every_api_response_has_a_schema(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app

    manager = JobManager(tmp_path / "runs", lambda job: None)
    try:
        api = TestClient(create_app(manager)).get("/openapi.json").json()
    finally:
        manager.close()
    for path, methods in api["paths"].items():
        for method, op in methods.items():
            ok = op["responses"].get("200") or op["responses"].get("201")
            content = (ok or {}).get("content", {})
            if path.endswith(("/export", "/table")):
                continue  # a file: JSON, GGUF, Parquet or CSV by format
            schema = content["application/json"]["schema"]
            assert schema.get("$ref") or schema.get("items", {}).get("$ref"), (method, path)
    summary = api["components"]["schemas"]["JobSummary"]
    assert {"state", "candidates", "budget", "cost_tokens"} <= set(summary["properties"])


def test_a_server_leaves_a_job_that_run_is_running_alone(tmp_path) -> None:
    """A job another process holds (a `run` under way) shows as running and is not queued:
    the server never runs it a second time, nor writes its state."""
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "job.yaml").write_text(yaml.safe_dump({**TINY, "name": "r"}))
    ran = []
    with running(JobDir(runs / "r")):
        manager = JobManager(runs, ran.append)
        try:
            assert manager.get("r").summary()["state"] == "running"
            assert list(manager.queue) == []
        finally:
            manager.close()
    assert ran == [] and not (runs / "r" / "state.json").exists()
