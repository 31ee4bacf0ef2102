"""The CLI's service commands against a real HTTP server (uvicorn on a loopback port)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from longrope_search.cli import main
from longrope_search.service.app import create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner
from tests.conftest import http_server


@pytest.fixture
def server(tmp_path):
    manager = JobManager(tmp_path / "results", local_runner(), data_roots=[tmp_path])
    with http_server(create_app(manager, token="t0k")) as url:
        yield manager, url
    manager.close()


def test_submit_follow_jobs_status_export(server, tmp_path, capsys):
    manager, url = server
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cli-job", "extension_ratio": 4, "k_documents": 2, "results_dir": "/elsewhere",
        "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}))
    auth = ["--server", url, "--token", "t0k"]
    assert main(["submit", str(config), "--follow", *auth]) == 0
    out = capsys.readouterr().out
    assert "submitted cli-job" in out and "finished" in out
    assert main(["submit", str(config), "--name", "cli-job-2", *auth]) == 0  # same config again
    assert manager.get("cli-job-2").spec.search == manager.get("cli-job").spec.search
    assert main(["submit", str(config), "--name", "../x", *auth]) == 2
    assert "name" in capsys.readouterr().err
    assert main(["jobs", *auth]) == 0
    assert "cli-job" in capsys.readouterr().out
    assert main(["status", "cli-job", *auth]) == 0
    assert "generation   1" in capsys.readouterr().out

    out_file = tmp_path / "factors.json"
    assert main(["export", "cli-job", "--format", "hf", "-o", str(out_file), *auth]) == 0
    hf = json.loads(out_file.read_text())
    best = json.loads((manager.results_dir / "cli-job" / "best.json").read_text())
    assert hf["rope_parameters"]["long_factor"] == pytest.approx(best["lambdas"])
    assert main(["export", "cli-job", "--format", "longrope", "--results-dir",
                 str(manager.results_dir)]) == 0  # no server needed
    assert json.loads(capsys.readouterr().out)["lambdas"] == pytest.approx(best["lambdas"])


def test_errors_are_clear(server, tmp_path, capsys):
    _, url = server
    assert main(["jobs", "--server", url]) == 2  # no token
    assert "401" in capsys.readouterr().err
    assert main(["status", "nope", "--server", url, "--token", "t0k"]) == 2
    assert "no job named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "extension_ratio": 0.5}))
    assert main(["submit", str(bad), "--server", url, "--token", "t0k"]) == 2
    assert "extension_ratio" in capsys.readouterr().err
    outside = tmp_path.parent / "outside.yaml"
    outside.write_text(yaml.safe_dump({"name": "x", "extension_ratio": 4, "model": "/etc"}))
    assert main(["submit", str(outside), "--server", url, "--token", "t0k"]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["jobs", "--server", "http://127.0.0.1:9", "--token", "t0k"]) == 1
    assert "cannot reach the server" in capsys.readouterr().err


def test_cancel_and_resume(server, tmp_path, capsys):
    manager, url = server
    auth = ["--server", url, "--token", "t0k"]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "c", "extension_ratio": 4, "k_documents": 2,
        "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 8, "mutations": 4, "crossovers": 4, "top_k": 4,
                      "generations": 4}}))
    assert main(["submit", str(config), *auth]) == 0
    job = manager.get("c")
    while job.progress.get("evaluations", 0) < 2 and job.state in ("queued", "running"):
        time.sleep(0.05)
    assert main(["cancel", "c", *auth]) == 0
    assert manager.wait("c", timeout=60).state == "cancelled"
    assert main(["resume", "c", *auth]) == 0
    assert main(["status", "c", "--follow", *auth]) == 0
    assert manager.get("c").state == "finished"
    assert not Path(manager.results_dir / "c" / "state.json.tmp").exists()


def test_every_strategy_resumes_after_the_server_is_sigkilled(tmp_path):
    """A real `serve` process, one queued job per strategy, SIGKILLed in the middle of the
    first: the restarted server resumes them all from their ledgers, nothing scored twice."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from longrope_search.search.ledger import open_study

    strategies = ("evolution", "steady", "tpe", "cmaes", "random")

    def serve(port: int) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "serve", "--port",
                                 str(port), "--results-dir", str(tmp_path / "runs")],
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
                return proc
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def scored(name: str) -> list[str]:
        path = tmp_path / "runs" / name / "ledger.journal"
        if not path.exists():
            return []
        return [t.user_attrs["key"] for t in open_study(path, name).get_trials(deepcopy=False)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = serve(port)
    evolution = {"population": 6, "mutations": 3, "crossovers": 3, "top_k": 3, "generations": 3}
    for strategy in strategies:
        spec = {"name": strategy, "strategy": strategy, "extension_ratio": 4, "k_documents": 2,
                "scoring": {"dtype": "float32"}, "search": evolution}
        assert httpx.post(f"{url}/api/jobs", json=spec, timeout=60).status_code == 201
    while len(scored("evolution")) < 8:
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    before = {name: scored(name) for name in strategies}
    assert 8 <= len(before["evolution"]) < 24

    server = serve(port)
    try:
        for name in strategies:
            while (job := httpx.get(f"{url}/api/jobs/{name}",
                                    timeout=30).json())["state"] in ("queued", "running"):
                time.sleep(0.2)
            assert job["state"] == "finished", job["error"]
            keys = scored(name)
            assert len(keys) == len(set(keys)) and keys[: len(before[name])] == before[name]
            assert job["strategy"] == name and job["cost_tokens"] > 0
    finally:
        server.terminate()
        server.wait(30)
