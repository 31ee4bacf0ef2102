"""Hostile but fair input, against the CLI and the HTTP API alike.

Every bad spec must be refused with an error that names the field, before any weights load and
before the API answers 201, and must leave no job folder behind; a ledger torn by a crash, a
stale lock and a kill's temporary files must not stop a resume.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

import longrope_search.search.driver as driver_module
import longrope_search.search.evaluator as evaluator_module
from longrope_search.cli import main
from longrope_search.search.ledger import FlockLock, Ledger, open_study
from longrope_search.search.plan import plan_job
from longrope_search.service.app import MAX_BODY_BYTES, create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner

TINY = {"name": "h", "extension_ratio": 4, "k_documents": 2,
        "scoring": {"dtype": "float32", "device": "cpu"},
        "evolution": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}


def data_files(root: Path) -> dict[str, str]:
    """Paths a bad spec can name: a folder of too-short documents, an empty one, nothing."""
    short = root / "short"
    short.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (short / f"{i}.txt").write_text("too short\n")
    (root / "empty").mkdir(exist_ok=True)
    return {"short": str(short), "empty": str(root / "empty"), "missing": str(root / "nope")}


def bad_specs(paths: dict[str, str]) -> list[tuple[dict, str]]:
    """(changes to a valid spec, the field its error must name)."""
    return [
        ({"original_length": 0}, "original_length"),
        ({"original_length": -5}, "original_length"),
        ({"original_length": 4096}, "original_length"),  # the embedded model's L is 128
        ({"extension_ratio": math.inf}, "extension_ratio"),
        ({"extension_ratio": 1e30}, "extension_ratio"),
        ({"documents": paths["short"]}, "documents"),
        ({"documents": paths["empty"]}, "documents"),
        ({"documents": paths["missing"]}, "documents"),
        ({"heldout_documents": paths["missing"]}, "heldout_documents"),
        ({"k_documents": 500}, "documents"),
        ({"scoring": {"batch_size": 0}}, "scoring.batch_size"),
        ({"scoring": {"mode": "sliding", "stride": 100_000}}, "scoring.stride"),
        ({"scoring": {"device": "tpu"}}, "scoring.device"),
        ({"evolution": {"population": 10, "top_k": 16}}, "evolution.top_k"),
        ({"space": {"lambda_min": 0}}, "space.lambda_min"),
        ({"deploy": "python", "space": {"n_hat": [0, 4096]}}, "space.n_hat"),
        ({"seed_files": [paths["missing"]]}, "seed_files[0]"),
        ({"seeds": ["pi"] * 20_000}, "seeds"),
        ({"strategy": "annealing"}, "strategy"),
        ({"strategy": "memetic", "strategy_options": {"minibatches": 3}},
         "strategy_options.minibatches"),
        ({"budget": {"tokens": 0}}, "budget.tokens"),
    ]


def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("weights were loaded before the spec was refused")

    # where every in-process search loads its weights (run_job and run_search alike)
    monkeypatch.setattr(evaluator_module, "load_model", refuse)


CASES = bad_specs(data_files(Path("/tmp/longrope-hostile")))


@pytest.mark.parametrize(("changes", "field"), CASES, ids=[f for _, f in CASES])
def test_cli_refuses_naming_the_field_before_any_weights(
        changes: dict, field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    no_weights(monkeypatch)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TINY, **changes}))
    assert main(["run", str(config), "--results-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}") and "Fix:" in err, err
    assert not (tmp_path / "runs" / "h").exists()  # nothing left to block a corrected rerun


@pytest.fixture
def api(tmp_path: Path):
    manager = JobManager(tmp_path / "results", lambda job: None, data_roots=[Path("/tmp")])
    yield manager, TestClient(create_app(manager, token="t0k"))
    manager.close()


AUTH = {"authorization": "Bearer t0k"}


@pytest.mark.parametrize(("changes", "field"), CASES, ids=[f for _, f in CASES])
def test_api_refuses_naming_the_same_field_without_a_job_folder(api, changes: dict,
                                                                field: str) -> None:
    manager, client = api
    body = json.dumps({**TINY, **changes})  # Infinity for inf, as Python's clients send it
    r = client.post("/api/jobs", content=body,
                    headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["fix"]
    assert not (manager.results_dir / "h").exists()


def test_a_body_over_the_limit_is_413_before_it_is_read(api) -> None:
    _, client = api
    big = b"x" * (MAX_BODY_BYTES + 1)
    assert client.post("/api/jobs", content=big).status_code == 413  # no token: still 413
    chunks = (b"y" * (1 << 19) for _ in range(64))  # 32 MiB, chunked, no Content-Length
    assert client.post("/api/jobs", content=chunks, headers=AUTH).status_code == 413
    assert client.post("/api/jobs", json=TINY).status_code == 401


def test_a_huge_list_is_refused_without_validating_its_items(api) -> None:
    """A list over its bound is refused by its length before its items are checked (the
    20 MB body of the report is refused by size; this one fits under the limit)."""
    _, client = api
    body = json.dumps({**TINY, "seeds": ["pi"] * 140_000})
    assert len(body) < MAX_BODY_BYTES
    t0 = time.perf_counter()
    r = client.post("/api/jobs", content=body, headers={**AUTH, "content-type":
                                                         "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "seeds"
    assert time.perf_counter() - t0 < 5  # validating each item first took minutes


def test_cli_errors_that_used_to_blame_the_wrong_thing(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    import ray

    assert main(["run", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["run", str(config), "--ray", "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: workers")
    assert not ray.is_initialized()  # refused before Ray started
    factors = tmp_path / "f.json"
    factors.write_text(json.dumps({"lambdas": [1.0] * 32, "n_hat": 600}))
    assert main(["eval", "--factors", str(factors), "--lengths", "256,512"]) == 2
    assert "n_hat" in capsys.readouterr().err


def test_a_corrected_config_reruns_under_the_same_name(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = data_files(tmp_path)["short"]
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TINY, "documents": short}))
    assert main(["run", str(config), "--results-dir", "runs", "--no-progress"]) == 2
    config.write_text(yaml.safe_dump(TINY))
    assert main(["run", str(config), "--results-dir", "runs", "--no-progress"]) == 0
    # the same job, whichever way its results folder is spelled: all of it reused
    assert main(["run", str(config), "--results-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 0


def small_job(tmp_path: Path, stop_after: int | None = None):
    from longrope_search.search.job import job_from_dict

    spec = job_from_dict({**TINY, "results_dir": str(tmp_path)})
    if stop_after is None:
        return spec, driver_module.run_search(spec, progress=False)

    class Stop(Exception):
        pass

    def stop(p: dict) -> None:
        if p["evaluations"] >= stop_after:
            raise Stop

    with pytest.raises(Stop):
        driver_module.run_search(spec, progress=False, on_progress=stop)
    return spec, None


def keys(job_dir: Path) -> list[str]:
    return [t.user_attrs["key"] for t in open_study(job_dir / "ledger.journal", job_dir.name)
            .get_trials(deepcopy=False)]


@pytest.mark.parametrize("appended_after", [False, True],
                         ids=["torn last line", "torn line then a later append"])
def test_a_torn_ledger_resumes(tmp_path: Path, appended_after: bool,
                               caplog: pytest.LogCaptureFixture) -> None:
    spec, _ = small_job(tmp_path, stop_after=3)
    ledger = spec.job_dir / "ledger.journal"
    whole = ledger.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn = whole + last[: len(last) // 2]  # a crash in the middle of an append
    if appended_after:  # what an older version then did: append onto the torn line
        torn += last + b"\n"
    ledger.write_bytes(torn)
    _, result = small_job(tmp_path)
    assert "dropped a torn record" in caplog.text
    done = keys(spec.job_dir)
    assert len(done) == len(set(done)) == spec.evaluation_budget
    assert (spec.job_dir / "best.json").is_file() and result.reused == 3


def test_a_stale_lock_and_leftover_temporary_files_cost_nothing(tmp_path: Path) -> None:
    spec, _ = small_job(tmp_path, stop_after=2)
    (spec.job_dir / "ledger.journal.lock").write_text("")  # left by a killed run
    leftover = spec.job_dir / "generations" / ".part-0.parquet.k1ll3d.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    holder = FlockLock(str(spec.job_dir / "ledger.journal"))
    holder.acquire()  # a live holder blocks…
    space = plan_job(spec).space
    blocked = threading.Thread(target=lambda: Ledger(spec.job_dir / "ledger.journal",
                                                     spec.name, space), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive()
    holder.release()  # …until it lets go; a dead one's flock is gone with its process
    blocked.join(5)
    assert not blocked.is_alive()
    small_job(tmp_path)
    assert not leftover.exists()
    assert not list(spec.job_dir.rglob(".*.tmp"))


def test_config_error_survives_pickling() -> None:
    """A worker's ConfigError reaches the coordinator as itself (Ray pickles it)."""
    import pickle

    from longrope_search.errors import ConfigError

    e = pickle.loads(pickle.dumps(ConfigError("documents", "too short", "use longer ones")))
    assert (e.field, e.problem, e.fix) == ("documents", "too short", "use longer ones")
    assert str(e) == "documents: too short. Fix: use longer ones"


def test_service_job_with_a_bad_document_never_starts(tmp_path: Path) -> None:
    """The defect: a 201 for documents the job could not use, then a failure seconds later."""
    manager = JobManager(tmp_path / "results", local_runner(), data_roots=[tmp_path])
    try:
        client = TestClient(create_app(manager))
        paths = data_files(tmp_path)
        r = client.post("/api/jobs", json={**TINY, "documents": paths["short"]})
        assert r.status_code == 422 and r.json()["field"] == "documents"
        assert "shorter" in r.json()["problem"] or "short" in r.json()["problem"]
        assert client.get("/api/jobs").json() == []
    finally:
        manager.close()


def listeners(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets that the processes ``pids`` listen on."""
    import re
    import subprocess

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids]


@pytest.fixture
def served(tmp_path: Path):
    """`serve` as a user starts it, in its own process: its URL and process."""
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "serve", "--port",
                               str(port), "--results-dir", str(tmp_path / "runs")],
                              cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, server
    finally:
        server.terminate()
        server.wait(30)


def test_a_served_job_listens_on_loopback_only(served) -> None:
    """A job running: `ss -ltn` shows the server's process tree on loopback only."""
    import httpx
    import psutil

    url, server = served
    spec = {**TINY, "evolution": {**TINY["evolution"], "generations": 6}}
    assert httpx.post(f"{url}/api/jobs", json=spec, timeout=60).status_code == 201
    seen: set[str] = set()
    while (state := httpx.get(f"{url}/api/jobs/h", timeout=30).json()["state"]) in ("queued",
                                                                                     "running"):
        tree = {server.pid} | {p.pid for p in psutil.Process(server.pid).children(True)}
        seen |= set(listeners(tree)) if state == "running" else set()
        time.sleep(0.2)
    assert state == "finished"
    assert seen and all(a.startswith(("127.", "[::1]")) for a in seen), seen


def test_a_fresh_server_takes_two_submits_at_once(served) -> None:
    """The first requests of a new server, side by side, are both checked and queued (two
    threads importing transformers' lazy modules at once failed with an ImportError)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    url, _ = served
    specs = [{**TINY, "name": name} for name in ("a", "b")]
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda s: httpx.post(f"{url}/api/jobs", json=s, timeout=60)
                              .status_code, specs))
    assert codes == [201, 201]
