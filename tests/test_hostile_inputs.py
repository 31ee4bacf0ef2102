"""Hostile but fair input, against the CLI and the HTTP API alike.

Every bad spec must be refused with an error that names the field, before any weights load and
before the API answers 201, and must leave no job folder behind; a ledger torn by a crash, a
stale lock and a kill's temporary files must not stop a resume.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

import longrope_search.search.evaluator as evaluator_module
import longrope_search.search.run as run_module
from longrope_search.cli import main
from longrope_search.search.ledger import FlockLock, Ledger, open_study
from longrope_search.search.plan import plan_job
from longrope_search.service.app import MAX_BODY_BYTES, create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner

TINY = {"name": "h", "extension_ratio": 4, "k_documents": 2,
        "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}


def data_files(root: Path) -> dict[str, str]:
    """Paths a bad spec can name: a folder of too-short documents, an empty one, nothing."""
    short = root / "short"
    short.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (short / f"{i}.txt").write_text("too short\n")
    (root / "empty").mkdir(exist_ok=True)
    (root / "folder.gguf").mkdir(exist_ok=True)
    return {"short": str(short), "empty": str(root / "empty"), "missing": str(root / "nope"),
            **hostile_ggufs(root), "folder.gguf": str(root / "folder.gguf")}


def hostile_ggufs(root: Path) -> dict[str, str]:
    """GGUF files whose headers claim 2⁶² tensors or keys (IndexError and KeyError from the
    reader reached users as tracebacks and HTTP 500), and one without a tokenizer."""
    import struct

    import gguf
    import numpy as np

    plain = root / "no-tokenizer.gguf"
    writer = gguf.GGUFWriter(plain, "llama")
    writer.add_block_count(1)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = {"no-tokenizer": str(plain)}
    for name, offset in (("huge-tensor-count", 8), ("huge-key-count", 16)):
        data = bytearray(plain.read_bytes())
        data[offset:offset + 8] = struct.pack("<Q", 2**62)
        (root / f"{name}.gguf").write_bytes(data)
        out[name] = str(root / f"{name}.gguf")
    return out


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
        ({"search": {"population": 10, "top_k": 16}}, "search.top_k"),
        ({"space": {"lambda_min": 0}}, "space.lambda_min"),
        ({"deploy": "python", "space": {"n_hat": [0, 4096]}}, "space.n_hat"),
        ({"seed_files": [paths["missing"]]}, "seed_files[0]"),
        ({"seeds": ["pi"] * 20_000}, "seeds"),
        ({"strategy": "annealing"}, "strategy"),
        ({"strategy": "memetic", "strategy_options": {"minibatches": 3}},
         "strategy_options.minibatches"),
        ({"budget": {"tokens": 0}}, "budget.tokens"),
        ({"budget": {"evaluations": 10**30}}, "budget.evaluations"),
        ({"scoring": {**TINY["scoring"], "needles": 8}}, "scoring.needles"),  # truncate mode
        ({"model": paths["huge-tensor-count"]}, "model"),
        ({"model": paths["huge-key-count"]}, "model"),
        ({"model": paths["no-tokenizer"]}, "model"),
        ({"model": paths["folder.gguf"]}, "model"),
        # every strategy's options through its own schema (evolution, tpe, cmaes and random
        # ran to the end with any key)
        ({"strategy_options": {"bogus_key": 1}}, "strategy_options.bogus_key"),
        ({"strategy": "tpe", "strategy_options": {"bogus_key": 1}}, "strategy_options.bogus_key"),
        ({"strategy": "cmaes", "strategy_options": {"n": 1}}, "strategy_options.n"),
        ({"strategy": "random", "strategy_options": {"n": 1}}, "strategy_options.n"),
        ({"strategy": "gradient", "strategy_options": {"lr": [1]}}, "strategy_options.lr"),
        # a stage's fields by their path, the short stage's options before stage 0 runs
        ({"extension_ratio": None, "stages": [{"extension_ratio": 2}, {
            "factors": "short", "strategy": "gradient", "strategy_options": {"steps": 0}}]},
         "stages[1].strategy_options.steps"),
        ({"extension_ratio": None, "stages": [{"target_length": 64}]},
         "stages[0].target_length"),
        ({"extension_ratio": None, "stages": [{"extension_ratio": 2, "strategy": "x"}]},
         "stages[0].strategy"),
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
        return spec, run_module.run_search(spec, progress=False)

    class Stop(Exception):
        pass

    def stop(p: dict) -> None:
        if p["evaluations"] >= stop_after:
            raise Stop

    with pytest.raises(Stop):
        run_module.run_search(spec, progress=False, on_progress=stop)
    return spec, None


def keys(job_dir: Path) -> list[str]:
    return [t.user_attrs["key"] for t in open_study(job_dir / "ledger.journal", job_dir.name)
            .get_trials(deepcopy=False)]


@pytest.mark.parametrize("damage", ["torn", "appended after", "foreign JSON"],
                         ids=["torn last line", "torn line then a later append",
                              "JSON lines that are no journal records"])
def test_a_torn_ledger_resumes(tmp_path: Path, damage: str,
                               caplog: pytest.LogCaptureFixture) -> None:
    spec, _ = small_job(tmp_path, stop_after=3)
    ledger = spec.job_dir / "ledger.journal"
    whole = ledger.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn = whole + last[: len(last) // 2]  # a crash in the middle of an append
    if damage == "appended after":  # what an older version then did: append onto the torn line
        torn += last + b"\n"
    if damage == "foreign JSON":  # parsed as JSON, kept, and Optuna failed on them
        first, rest = whole.split(b"\n", 1)
        torn = first + b'\n[1, 2]\n{"op_code": 4}\n"text"\n7\n' + rest
    ledger.write_bytes(torn)
    _, result = small_job(tmp_path)
    assert "dropped a torn or foreign record" in caplog.text
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
    yield from serving(tmp_path)


def serving(tmp_path: Path, *options: str):
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "serve", "--port",
                               str(port), "--results-dir", str(tmp_path / "runs"), *options],
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
    spec = {**TINY, "search": {**TINY["search"], "generations": 6}}
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


# -- issue 31: export -o, damaged job folders, file-system refusals ---------------------------

@pytest.fixture(scope="module")
def finished_job(tmp_path_factory) -> Path:
    """A results folder holding one finished job, ``h``."""
    root = tmp_path_factory.mktemp("finished")
    small_job(root)
    return root


def test_export_o_writes_only_to_a_regular_file_or_a_new_path(
        finished_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``-o /dev/full`` became a 17 MB regular file; a FIFO and a symlink were replaced too."""
    export = ["export", "h", "--results-dir", str(finished_job), "--format", "hf", "-o"]
    fifo, target, link, folder = (tmp_path / n for n in ("fifo", "t.json", "l.json", "d"))
    os.mkfifo(fifo)
    target.write_text("keep")
    link.symlink_to(target)
    folder.mkdir()
    for path, what in ((fifo, "a device, FIFO or socket"), (link, "a symbolic link"),
                       (folder, "a directory")):
        assert main([*export, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: -o: ") and what in err, err
    assert main(["export", "h", "--results-dir", str(finished_job), "--format", "gguf",
                 "--gguf", str(tmp_path / "in.gguf"), "-o", str(folder)]) == 2
    assert "a directory" in capsys.readouterr().err
    for hostile in hostile_ggufs(tmp_path).values():  # a message, not a traceback
        assert main(["export", "h", "--results-dir", str(finished_job), "--format", "gguf",
                     "--gguf", hostile, "-o", str(tmp_path / "out.gguf")]) == 2
        assert capsys.readouterr().err.startswith("error: gguf: ")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert target.read_text() == "keep" and not any(folder.iterdir())
    out = tmp_path / "config.json"  # an existing file keeps its mode, whatever the umask
    out.write_text("{}")
    os.chmod(out, 0o644)
    old = os.umask(0o077)
    try:
        assert main([*export, str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(out.read_text())["rope_parameters"]["rope_type"] == "longrope"
    assert main([*export, str(tmp_path / "new.json")]) == 0  # a new path is fine
    capsys.readouterr()
    for fmt in ("vllm", "longrope"):  # --config was ignored: it patches a whole config.json
        assert main(["export", "h", "--results-dir", str(finished_job), "--format", fmt,
                     "--config"]) == 2
        assert capsys.readouterr().err.startswith("error: config: ")


def damage(folder: Path, how: str) -> None:
    if how == "truncated table":
        table = sorted((folder / "generations").glob("*.parquet"))[0]
        table.write_bytes(table.read_bytes()[:100])
    elif how == "state.json not JSON":
        (folder / "state.json").write_text('{"state": "fin')
    elif how == "state.json a list":
        (folder / "state.json").write_text("[1]")
    elif how == "state.json without state":
        (folder / "state.json").write_text('{"progress": {}}')
    elif how == "best.json cut off":
        (folder / "best.json").write_text((folder / "best.json").read_text()[:50])
    elif how == "job.yaml not YAML":
        (folder / "job.yaml").write_text("name: [")
    elif how == "job.yaml a directory":
        (folder / "job.yaml").unlink()
        (folder / "job.yaml").mkdir()


DAMAGE = ["truncated table", "state.json not JSON", "state.json a list",
          "state.json without state", "best.json cut off", "job.yaml not YAML",
          "job.yaml a directory"]


@pytest.fixture
def damaged(finished_job: Path, tmp_path: Path) -> Path:
    """A results folder with the finished job ``h`` and a damaged copy of it per kind."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(finished_job / "h", root / "h")
    for i, how in enumerate(DAMAGE):
        copy = root / f"b{i}"
        shutil.copytree(finished_job / "h", copy)
        (copy / "job.yaml").write_text((copy / "job.yaml").read_text().replace(
            "name: h", f"name: b{i}"))
        damage(copy, how)
    return root


def test_a_damaged_job_folder_is_listed_as_broken_and_the_rest_is_served(
        damaged: Path, capsys: pytest.CaptureFixture) -> None:
    """Each of these damages made `serve` exit at start (ArrowInvalid from JobManager._load);
    a folder with an invalid job.yaml vanished, and its name then got 409 "resume it" on submit
    while resume said 404."""
    manager = JobManager(damaged, lambda job: None, data_roots=[Path("/tmp")])
    try:
        client = TestClient(create_app(manager))
        jobs = {j["name"]: j for j in client.get("/api/jobs").json()}
        assert jobs["h"]["state"] == "finished"
        broken = {f"b{i}" for i in range(len(DAMAGE))}
        assert {n for n, j in jobs.items() if j["state"] == "broken"} == broken
        assert all(jobs[n]["error"] for n in broken)
        assert "generations/0000.parquet" in jobs["b0"]["error"]
        assert "best.json" in jobs["b4"]["error"] and "job.yaml" in jobs["b6"]["error"]
        r = client.get("/api/jobs/b5")
        assert r.status_code == 409 and "broken" in r.json()["detail"]
        assert client.post("/api/jobs/b5/resume").status_code == 409
        r = client.post("/api/jobs", json={**TINY, "name": "b5"})
        assert r.status_code == 409 and "broken" in r.json()["detail"]
        assert client.get("/api/jobs/h/best").status_code == 200
    finally:
        manager.close()
    assert main(["jobs", "--results-dir", str(damaged)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(" broken " in line for line in lines) == len(DAMAGE)
    assert main(["status", "b0", "--results-dir", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: job: b0 is broken") and "Parquet" in err


def test_file_system_refusals_are_messages_not_tracebacks(
        finished_job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A results folder through a file was a NotADirectoryError after the header; a full disk
    a raw OSError."""
    import errno

    import longrope_search.io as io_module

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(TINY))
    (tmp_path / "file").write_text("")
    no_weights(monkeypatch)  # refused before
    assert main(["run", str(config), "--results-dir", str(tmp_path / "file" / "x"),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: results_dir: ")

    def full(path, write):  # the disk fills while the export is written
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io_module, "atomic_write", full)
    assert main(["export", "h", "--results-dir", str(finished_job), "--format", "hf",
                 "-o", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "out.json: No space left on device. Fix: free space" in err


def test_the_token_is_checked_before_the_body(api) -> None:
    """An unauthenticated POST with malformed JSON got 422, telling a stranger about the API."""
    _, client = api
    for body in (b"{not json", b'{"name": 3}', b"[]"):
        r = client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/jobs", content=b"{not json",
                    headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422  # with the token: the body's error
    assert client.get("/api/jobs/x/best").status_code == 401
    assert client.get("/api/jobs", headers=AUTH).status_code == 200


def test_late_and_vague_refusals_come_first_and_say_what(
        finished_job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Each of these was refused only after the weights loaded, or with a message that named
    the wrong thing or gave an impossible fix."""
    import shutil

    from longrope_search.search.jobdir import JobDir, claim
    from longrope_search.search.recovery import recovery_spec

    no_weights(monkeypatch)

    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    for flag in ("k", "stride", "batch-size"):  # --k 0 scored nothing, --stride 0 looped
        assert refused("eval", f"--{flag}", "0").startswith(f"error: {flag}: must be ≥ 1")
    root = tmp_path / "r"
    shutil.copytree(finished_job, root)
    edited = tmp_path / "h.yaml"  # the same job, edited: what differs is named
    edited.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"],
                                                            "generations": 2}}))
    err = refused("run", str(edited), "--results-dir", str(root), "--no-progress")
    assert "search.generations: 1 there, 2 here" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert f"{empty} is empty" in refused("run", str(empty))
    short = recovery_spec(root / "h")  # a -short job begun with other options
    claim(JobDir(short.job_dir), short)
    err = refused("recover", str(root / "h"), "--strategy", "tpe")
    assert "run recover with the options it was started with" in err
    assert "new job name" not in err
    garbage = tmp_path / "g"
    shutil.copytree(finished_job, garbage)
    (garbage / "h" / "job.yaml").write_text("name: [")
    err = refused("run", str(edited), "--results-dir", str(garbage), "--no-progress")
    assert "job.yaml cannot be read" in err and "has not finished" not in err
    cut = tmp_path / "c"
    shutil.copytree(finished_job, cut)
    (cut / "h" / "best.json").write_text('{"lambdas": [1.0]}')
    assert "lacks original_length" in refused("recover", str(cut / "h"))
    chain = tmp_path / "chain"
    shutil.copytree(finished_job, chain)
    (chain / "h" / "job.yaml").write_text(yaml.safe_dump(
        {**TINY, "extension_ratio": None, "stages": [{"extension_ratio": 2}]}))
    assert "is a chained job" in refused("recover", str(chain / "h"))


def test_resume_after_job_yaml_was_edited_is_refused_at_once(finished_job: Path,
                                                             tmp_path: Path) -> None:
    """The runner refused it after the weights loaded, and the job failed."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(finished_job, root)
    (root / "h" / "state.json").write_text('{"state": "cancelled", "submitted": 0}')
    ran: list[str] = []
    manager = JobManager(root, lambda job: ran.append(job.name), data_roots=[Path("/tmp")])
    try:
        client = TestClient(create_app(manager))
        spec = yaml.safe_load((root / "h" / "job.yaml").read_text())
        spec["search"]["generations"] = 2
        (root / "h" / "job.yaml").write_text(yaml.safe_dump(spec))
        r = client.post("/api/jobs/h/resume")
        assert r.status_code == 409 and "search.generations: 1 there" not in r.text
        assert "search.generations" in r.json()["detail"]
        assert client.get("/api/jobs/h").json()["state"] == "cancelled" and ran == []
    finally:
        manager.close()


def test_a_sigkilled_ray_run_leaves_no_ray_process(tmp_path: Path) -> None:
    """After SIGKILL of `run --ray` two orphaned Ray agent processes lived about 80 s."""
    import signal
    import subprocess
    import sys

    from longrope_search.reaper import descendants, start_time

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"],
                                                            "generations": 20}}))
    proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "run", str(config),
                             "--ray", "--workers", "1", "--results-dir", str(tmp_path / "runs"),
                             "--no-progress"], env={**os.environ, "RAY_ADDRESS": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = tmp_path / "runs" / "h" / "ledger.journal"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            ledger.exists() and ledger.read_bytes().count(b"\n") >= 3):
        time.sleep(0.2)  # a few evaluations in: the cluster and its worker are up
    ray_procs = {pid: start_time(pid) for pid in descendants(proc.pid)}
    assert proc.poll() is None and len(ray_procs) >= 3  # gcs, raylet, agents, the worker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(start_time(p) == t for p, t in ray_procs.items()):
        time.sleep(0.5)
    assert [p for p, t in ray_procs.items() if start_time(p) == t] == []
