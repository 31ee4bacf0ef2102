"""The job API on a real FastAPI app and real (tiny) searches of the embedded model."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from longrope_search.search.ledger import open_study
from longrope_search.service.app import create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner

FINISHED_JOB = Path(__file__).parents[1] / "results" / "embedded-8x"


def ledger_keys(job_dir: Path) -> list[str]:
    trials = open_study(job_dir / "ledger.journal", job_dir.name).get_trials(deepcopy=False)
    return [t.user_attrs["key"] for t in trials]


def tiny(name: str, **over) -> dict:
    spec = {"name": name, "extension_ratio": 4, "k_documents": 2,
            "scoring": {"dtype": "float32", "device": "cpu"},
            "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                          "generations": 2}}
    return {**spec, **over}


@pytest.fixture
def service(tmp_path):
    shutil.copytree(FINISHED_JOB, tmp_path / "results" / "embedded-8x",
                    ignore=shutil.ignore_patterns("ledger.journal*"))
    manager = JobManager(tmp_path / "results", local_runner(), data_roots=[tmp_path / "data"])
    yield manager, TestClient(create_app(manager))
    manager.close()


def test_finished_job_endpoints(service):
    _manager, client = service
    jobs = client.get("/api/jobs").json()
    assert [j["name"] for j in jobs] == ["embedded-8x"] and jobs[0]["state"] == "finished"
    best_json = json.loads((FINISHED_JOB / "best.json").read_text())
    assert jobs[0]["best_ppl"] == pytest.approx(best_json["search_ppl"])
    # a job run by `longrope-search run`: its progress comes from its tables
    assert (jobs[0]["generation"], jobs[0]["evaluations"], jobs[0]["fraction_done"]) == \
        (40, 64 + 40 * 32, 1.0)
    tables = pd.read_parquet(FINISHED_JOB / "generations")
    assert jobs[0]["pruned"] == int((tables.status == "pruned").sum()) > 0

    detail = client.get("/api/jobs/embedded-8x").json()
    assert detail["spec"]["extension_ratio"] == 8
    gens = client.get("/api/jobs/embedded-8x/generations").json()
    assert [g["generation"] for g in gens] == list(range(41))
    assert gens == detail["generation_summaries"]
    best_per_gen = [g["best_ppl"] for g in gens]
    assert best_per_gen == sorted(best_per_gen, reverse=True)  # parents carried over

    rows = client.get("/api/jobs/embedded-8x/generations/3").json()
    assert len(rows) == gens[3]["population"] and all(r["generation"] == 3 for r in rows)
    assert client.get("/api/jobs/embedded-8x/generations/99").status_code == 404

    cands = client.get("/api/jobs/embedded-8x/candidates").json()
    assert len(cands["ppl"]) == sum(g["new"] for g in gens) == 64 + 40 * 32
    assert len(set(cands["candidate_id"])) == len(cands["candidate_id"])

    best = client.get("/api/jobs/embedded-8x/best").json()
    assert best["lambdas"] == pytest.approx(best_json["lambdas"], rel=1e-6)
    assert best["n_hat"] == best_json["n_hat"] and best["final"]
    assert set(best["seed_lambdas"]) == {"pi", "ntk", "yarn"}
    assert len(best["top_k_n_hat"]) == 32
    assert client.get("/openapi.json").json()["info"]["title"] == "longrope-search"
    assert client.get("/dashboard/").status_code == 200


def test_submit_runs_to_the_end(service):
    manager, client = service
    r = client.post("/api/jobs", json=tiny("t1", results_dir="/tmp/elsewhere"))
    assert r.status_code == 201, r.text
    assert r.json()["state"] in ("queued", "running")
    job = manager.wait("t1", timeout=120)
    assert job.state == "finished", job.error
    assert job.dir.parent == manager.results_dir  # results_dir in a request is not obeyed
    detail = client.get("/api/jobs/t1").json()
    assert detail["evaluations"] == detail["budget"] == 12 and detail["fraction_done"] == 1
    assert len(detail["generation_summaries"]) == 3
    best = client.get("/api/jobs/t1/best").json()
    assert best["final"] and best["ppl"] == pytest.approx(detail["best_ppl"])
    assert set(best["seed_ppl"]) <= {"pi", "ntk", "yarn"}
    held = [r["method"] for r in best["heldout"]["rows"]]  # held-out comparison, as `run` does
    assert held == ["best", "unmodified", "pi", "ntk", "yarn"]
    assert best["heldout"]["lengths"] == [64, 128, 256, 512]  # L/2 … L' = 4L, by length
    assert all(list(r["ppl_by_length"]) == ["64", "128", "256", "512"]
               for r in best["heldout"]["rows"])
    assert client.post("/api/jobs", json=tiny("t1")).status_code == 409  # name taken
    assert client.post("/api/jobs/t1/cancel").status_code == 409  # finished
    assert client.post("/api/jobs/t1/resume").status_code == 409


@pytest.mark.parametrize("spec, field", [
    ({"name": "bad", "extension_ratio": 0.5}, "extension_ratio"),
    ({"name": "bad"}, "target_length"),
    ({"name": "bad", "extension_ratio": 4, "k_documents": 0}, "k_documents"),
    ({"name": "bad", "extension_ratio": 4, "search": {"top_k": 500}}, "search.top_k"),
    ({"name": "bad", "extension_ratio": 4, "scoring": {"mode": "nope"}}, "scoring.mode"),
    ({"name": "bad", "extension_ratio": 4, "bogus": 1}, "bogus"),
    ({"name": "bad", "extension_ratio": 4, "trust_remote_code": True}, "trust_remote_code"),
    ({"name": "bad", "extension_ratio": 4, "deploy": "python",
      "space": {"n_hat": [0, 100000]}}, "space.n_hat"),
    ([1, 2], "spec"),
])
def test_bad_specs_are_4xx_naming_the_field(service, spec, field):
    manager, client = service
    r = client.post("/api/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert r.json().get("field", "").startswith(field), r.json()
    assert not (manager.results_dir / "bad").exists()


@pytest.mark.parametrize("spec, field", [
    ({"name": "../escape", "extension_ratio": 4}, "name"),
    ({"name": "a/b", "extension_ratio": 4}, "name"),
    ({"name": "x", "extension_ratio": 4, "model": "/etc"}, "model"),
    ({"name": "x", "extension_ratio": 4, "documents": "../../.."}, "documents"),
    ({"name": "x", "extension_ratio": 4, "heldout_documents": "~"}, "heldout_documents"),
    ({"name": "x", "extension_ratio": 4, "seed_files": ["/etc/passwd"]}, "seed_files[0]"),
])
def test_paths_in_requests_stay_inside(service, spec, field, tmp_path):
    manager, client = service
    r = client.post("/api/jobs", json=spec)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert sorted(p.name for p in manager.results_dir.iterdir()) == ["embedded-8x"]
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("path", [
    "/api/jobs/..%2F..%2Fetc", "/api/jobs/%2e%2e/best", "/api/jobs/..%2Fembedded-8x/best",
    "/api/jobs/.hidden/candidates", "/api/jobs/embedded-8x/export?format=hf&short_from=..%2Fx",
    "/static/..%2F..%2Fapp.py", "/static/vendor/..%2F..%2Fjobs.py",
])
def test_traversal_urls_find_nothing(service, path):
    _, client = service
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "JobManager" not in r.text and "root:" not in r.text


def test_concurrent_submissions_queue(service):
    manager, client = service
    names = [f"c{i}" for i in range(3)]
    codes: list[tuple[str, int]] = []

    def post(name: str) -> None:
        codes.append((name, client.post("/api/jobs", json=tiny(name)).status_code))

    threads = [threading.Thread(target=post, args=(n,)) for n in [*names, "c0", "c0"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c for n, c in codes if n == "c0") == [201, 409, 409]  # one wins the name
    assert all(c == 201 for n, c in codes if n != "c0")
    assert len(list(manager.results_dir.glob("c0/job.yaml"))) == 1
    jobs = [manager.wait(n, timeout=180) for n in names]
    assert all(j.state == "finished" for j in jobs), [j.error for j in jobs]
    spans = sorted((j.started, j.finished) for j in jobs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # one at a time


@pytest.mark.parametrize("strategy", ["evolution", "steady", "tpe", "cmaes", "random", "memetic"])
def test_cancel_then_resume_repeats_no_evaluation(service, strategy):
    manager, client = service
    options = {"steps": 2} if strategy == "memetic" else {}  # short polishes: a quick job
    spec = tiny("cr", strategy=strategy, strategy_options=options,
                search={"population": 6, "mutations": 3, "crossovers": 3, "top_k": 3,
                           "generations": 3})
    assert client.post("/api/jobs", json=spec).status_code == 201
    job = manager.get("cr")
    while job.progress.get("evaluations", 0) < 4 and job.state in ("queued", "running"):
        threading.Event().wait(0.05)
    progress = client.get("/api/jobs/cr").json()
    assert progress["strategy"] == strategy and progress["cost_tokens"] > 0
    assert client.post("/api/jobs/cr/cancel").json()["name"] == "cr"
    job = manager.wait("cr", timeout=60)
    assert job.state == "cancelled"
    done = len(ledger_keys(job.dir))
    assert 0 < done < 24
    assert done <= job.progress["evaluations"] + 1  # stopped within one evaluation
    assert client.post("/api/jobs/cr/resume").status_code == 200
    job = manager.wait("cr", timeout=120)
    assert job.state == "finished", job.error
    keys = ledger_keys(job.dir)
    # every distinct candidate scored once; a strategy's repeat of one (random and TPE with
    # n̂ fixed at 0 may repeat one) costs a budget slot and no evaluation
    tables = pd.read_parquet(job.dir / "generations")
    asked = tables[tables.operator != "parent"].candidate_id
    assert len(keys) == len(set(keys)) == asked.nunique()
    assert len(keys) >= job.spec.search.budget - 2


def test_restarted_server_resumes_interrupted_jobs(tmp_path):
    manager = JobManager(tmp_path, local_runner())
    manager.submit(tiny("r1"))
    manager.close()  # stops before or while running: the job stays queued on disk
    state = json.loads((tmp_path / "r1" / "state.json").read_text())["state"]
    assert state in ("queued", "running", "finished")
    again = JobManager(tmp_path, local_runner())
    try:
        assert again.wait("r1", timeout=120).state == "finished"
    finally:
        again.close()


def test_bearer_token(tmp_path):
    manager = JobManager(tmp_path, local_runner())
    client = TestClient(create_app(manager, token="s3cret"))
    try:
        assert client.get("/api/jobs").status_code == 401
        assert client.get("/api/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = client.get("/api/jobs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == []
        assert client.get("/dashboard/").status_code == 200  # the page asks for the token
    finally:
        manager.close()


def test_export_endpoint(service):
    _, client = service
    best_json = json.loads((FINISHED_JOB / "best.json").read_text())
    for fmt, key in (("hf", "rope_parameters"), ("vllm", "rope_scaling"),
                     ("longrope", None)):
        r = client.get(f"/api/jobs/embedded-8x/export?format={fmt}")
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"] == f'attachment; filename="embedded-8x.{fmt}.json"'
        data = r.json()
        lam = data[key]["long_factor"] if key else data["lambdas"]
        assert lam == pytest.approx(best_json["lambdas"])
    config = client.get("/api/jobs/embedded-8x/export?format=hf&config=true")
    assert 'filename="embedded-8x.config.json"' in config.headers["content-disposition"]
    assert config.json()["max_position_embeddings"] == 1024
    assert config.json()["model_type"] == "llama"
    assert "ignore" in client.get("/api/jobs/embedded-8x/export").json()["longrope_search"]["note"]
    assert client.get("/api/jobs/embedded-8x/export?format=gguf").status_code == 422
    assert client.get("/api/jobs/nope/export").status_code == 404
