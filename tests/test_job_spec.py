"""The job spec's models: each bad input named by field with a fix, the same in the CLI and the
HTTP API; the schema in /openapi.json; every shipped and recorded spec still loads."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from longrope_search.errors import ConfigError
from longrope_search.search.job import (
    Dtype,
    JobSpec,
    job_from_dict,
    load_job,
)
from longrope_search.search.strategies import STRATEGIES
from longrope_search.service.app import create_app
from longrope_search.service.jobs import JobManager

ROOT = Path(__file__).parents[1]
BASE = {"name": "bad", "extension_ratio": 8}

# (changes to BASE, the field named, a fragment of the fix)
BAD = [
    ({"serach": {}}, "serach", "did you mean 'search'?"),
    ({"scoring": {"batchsize": 4}}, "scoring.batchsize", "did you mean 'scoring.batch_size'?"),
    ({"k_documents": "five"}, "k_documents", "give an integer"),
    ({"seed": True}, "seed", "give an integer"),
    ({"scoring": 3}, "scoring", "give a mapping"),
    ({"name": "../etc"}, "name", "letters, digits"),
    ({"name": None}, "name", "give a string"),
    ({"model": "m" * 5000}, "model", "4096 characters at most"),
    ({"extension_ratio": float("inf")}, "extension_ratio", "finite"),
    ({"extension_ratio": float("nan")}, "extension_ratio", "finite"),
    ({"extension_ratio": 1e30}, "extension_ratio", "≤ 1024"),
    ({"extension_ratio": 1}, "extension_ratio", "> 1"),
    ({"extension_ratio": "eight"}, "extension_ratio", "give a number"),
    ({"target_length": 65536}, "target_length", "extension_ratio: 8"),
    ({"extension_ratio": None, "target_length": 1}, "target_length", "≥ 2"),
    ({"extension_ratio": None, "target_length": 1 << 30}, "target_length", "≤ 16777216"),
    ({"original_length": 0}, "original_length", "≥ 2"),
    ({"original_length": -4096}, "original_length", "≥ 2"),
    ({"k_documents": 0}, "k_documents", "≥ 1"),
    ({"k_documents": 5000}, "k_documents", "≤ 1024"),
    ({"seed": -1}, "seed", "≥ 0"),
    ({"strategy": "sgd"}, "strategy", "evolution, steady"),
    ({"attention_factor": "big"}, "attention_factor", "su"),
    ({"attention_factor": -1}, "attention_factor", "su"),
    ({"seeds": ["pi"] * 17}, "seeds", "at most 16"),
    ({"seeds": ["pi", "foo"]}, "seeds[1]", "'yarn'"),
    ({"seeds": "pi"}, "seeds", "give a list"),
    ({"seed_files": ["f"] * 65}, "seed_files", "at most 64"),
    ({"scoring": {"mode": "nope"}}, "scoring.mode", "'truncate', 'sliding' or 'needle'"),
    ({"scoring": {"stride": 0}}, "scoring.stride", "≥ 1"),
    ({"scoring": {"batch_size": 0}}, "scoring.batch_size", "batch_size: auto"),
    ({"scoring": {"dtype": "fp8"}}, "scoring.dtype", "'bfloat16'"),
    ({"scoring": {"device": "gpu"}}, "scoring.device", "cuda:N"),
    ({"space": {"lambda_min": 0}}, "space.lambda_min", "> 0"),
    ({"space": {"lambda_min": 2, "lambda_max": 1.5}}, "space.lambda_max", "raise lambda_max"),
    ({"space": {"step": 0}}, "space.step", "> 0"),
    ({"space": {"monotone": "up"}}, "space.monotone", "'strict'"),
    ({"space": {"n_hat": [0, -1]}}, "space.n_hat[1]", "≥ 0"),
    ({"space": {"n_hat": list(range(65))}}, "space.n_hat", "at most 64"),
    ({"space": {"critical_dim": -1}}, "space.critical_dim", "≥ 0"),
    ({"search": {"population": 10, "top_k": 16}}, "search.top_k", "top_k ≤ population"),
    ({"search": {"population": 1}}, "search.population", "≥ 2"),
    ({"search": {"mutation_prob": 0}}, "search.mutation_prob", "> 0"),
    ({"search": {"mutations": 0, "crossovers": 0}}, "search.mutations", "crossovers > 0"),
    ({"early_stopping": {"rule": "race"}}, "early_stopping.rule", "'sequential'"),
    ({"early_stopping": {"margin": -0.1}}, "early_stopping.margin", "≥ 0"),
    ({"early_stopping": {"z": 0}}, "early_stopping.z", "> 0"),
    ({"early_stopping": {"z": float("inf")}}, "early_stopping.z", "finite"),
    ({"budget": {"evaluations": 0}}, "budget.evaluations", "≥ 1"),
    ({"budget": {"tokens": 0}}, "budget.tokens", "≥ 1"),
    ({f"key{i}": 1 for i in range(100)}, "spec", "remove the unknown keys"),
]
IDS = [field for _, field, _ in BAD]


def cli_error(changes: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        job_from_dict({**BASE, **changes})
    return info.value


@pytest.mark.parametrize(("changes", "field", "fix"), BAD, ids=IDS)
def test_bad_specs_name_the_field_and_the_fix(changes: dict, field: str, fix: str) -> None:
    e = cli_error(changes)
    assert (e.field, fix in e.fix) == (field, True), str(e)


def test_problems_say_what_is_wrong() -> None:
    assert cli_error({"search": {"population": 10, "top_k": 16}}).problem == \
        "top_k 16 is larger than population 10"
    assert cli_error({"seeds": ["pi"] * 3_500_000}).problem == \
        "has 3500000 items, more than 16"
    assert cli_error({"strategy": "sgd"}).problem == "unknown strategy 'sgd'"
    with pytest.raises(ConfigError, match="spec: expected a mapping"):
        job_from_dict([1, 2])
    with pytest.raises(ConfigError, match="name: required key missing"):
        job_from_dict({"extension_ratio": 8})


def post(client: TestClient, body: object) -> Response:
    """POST a spec as JSON, inf and nan included (as Python's json module writes them)."""
    return client.post("/api/jobs", content=json.dumps(body),
                       headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    manager = JobManager(tmp_path_factory.mktemp("api") / "results", runner=lambda job: None)
    yield manager, TestClient(create_app(manager))
    manager.close()


@pytest.mark.parametrize(("changes", "field", "fix"), BAD, ids=IDS)
def test_the_api_answers_as_the_cli(api, changes: dict, field: str, fix: str) -> None:
    manager, client = api
    r = post(client, {**BASE, **changes})
    assert r.status_code == 422, r.text
    e = cli_error(changes)
    answer = r.json()
    assert {k: answer[k] for k in ("detail", "field", "problem", "fix")} == \
        {"detail": str(e), "field": e.field, "problem": e.problem, "fix": e.fix}
    assert list(manager.results_dir.iterdir()) == []


def test_the_api_refuses_what_is_not_a_spec(api) -> None:
    _, client = api
    r = client.post("/api/jobs", content=b"{not json", headers={"content-type":
                                                                 "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "spec", r.text
    assert client.post("/api/jobs", json=[1, 2]).json()["field"] == "spec"


def test_openapi_describes_the_spec_field_by_field(api) -> None:
    _, client = api
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def section(name: str, key: str) -> dict:
        ref = schemas[name]["properties"][key]["$ref"]
        return schemas[ref.rsplit("/", 1)[-1]]

    request = schemas["JobRequest"]
    assert "results_dir" not in request["properties"]  # the server chooses it
    assert request["properties"]["extension_ratio"]["description"]
    assert section("JobRequest", "scoring")["properties"]["batch_size"]["description"]
    assert section("JobRequest", "budget")["properties"]["tokens"]["description"]
    assert request["properties"]["seeds"]["maxItems"] == 16
    for name in ("JobRequest", "ScoringSpec", "SpaceSpec", "SearchSettings",
                 "EarlyStoppingSpec", "BudgetSpec"):
        props = schemas[name]["properties"]
        undescribed = [k for k, p in props.items()
                       if not p.get("description") and "$ref" not in p]
        assert undescribed == [], name
        assert schemas[name]["additionalProperties"] is False


def test_openapi_gives_each_strategys_options_schema(api) -> None:
    """strategy_options is one schema per strategy, with types and bounds (it was a bare
    mapping, and evolution, tpe, cmaes and random took any key)."""
    _, client = api
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    branches = {b["title"]: b for b in schemas["JobRequest"]["properties"]["strategy_options"]
                ["anyOf"]}
    assert set(branches) == {f"{name} options" for name in STRATEGIES}
    lr = branches["gradient options"]["properties"]["lr"]
    assert lr["type"] == "number" and lr["minimum"] > 0 and lr["maximum"] <= 10
    assert branches["memetic options"]["properties"]["steps"]["minimum"] == 1
    for name in ("evolution", "tpe", "cmaes", "random"):
        assert branches[f"{name} options"]["properties"] == {}
        assert branches[f"{name} options"]["additionalProperties"] is False


SPECS = sorted(ROOT.glob("configs/*.yaml")) + sorted(ROOT.glob("results/*/job.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_and_recorded_specs_load(path: Path) -> None:
    spec = load_job(path)
    assert job_from_dict(spec.to_dict()) == spec  # to_dict reads back


def test_load_job_names_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_job(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")


def test_budget_and_results_dir() -> None:
    spec = job_from_dict({**BASE, "search": {"population": 8, "mutations": 2,
                                                "crossovers": 2, "top_k": 4, "generations": 3}})
    assert spec.evaluation_budget == spec.search.budget == 8 + 3 * 4
    more = job_from_dict({**spec.to_dict(), "budget": {"evaluations": 100, "tokens": 10**9}})
    assert (more.evaluation_budget, more.budget.tokens) == (100, 10**9)
    moved = spec.with_results_dir(Path("/tmp/elsewhere"))
    assert moved.job_dir == Path("/tmp/elsewhere/bad") and spec.results_dir == "runs"
    assert isinstance(moved, JobSpec) and moved.to_dict()["seeds"] == ["pi", "ntk", "yarn"]


def test_the_dtype_literal_matches_what_the_loader_accepts() -> None:
    from longrope_search.model.loading import DTYPES

    assert set(typing.get_args(Dtype)) == {"auto", *DTYPES}


def test_the_old_evolution_block_is_read_as_search_with_a_warning() -> None:
    settings = {"population": 8, "mutations": 2, "crossovers": 2, "top_k": 4, "generations": 3}
    with pytest.warns(FutureWarning, match="now called search:"):
        old = job_from_dict({**BASE, "evolution": settings})
    assert old == job_from_dict({**BASE, "search": settings})
    assert "evolution" not in old.to_dict()  # written back in the new spelling
    with pytest.raises(ConfigError, match="both are given") as err:
        job_from_dict({**BASE, "evolution": settings, "search": settings})
    assert err.value.field == "evolution"


def test_the_api_lists_its_vocabulary_and_describes_every_answer(api) -> None:
    from longrope_search.deploy import ExportFormat
    from longrope_search.search.trial import SEED_PREFIX, Status
    from longrope_search.service.states import State

    _, client = api
    words = client.get("/api/vocabulary").json()
    assert words["statuses"] == {s.name: s.value for s in Status}
    assert words["states"] == {s.name: s.value for s in State}
    assert words["export_formats"] == {f.name: f.value for f in ExportFormat}
    assert words["seed_prefix"] == SEED_PREFIX
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for verb, op in operations.items():
            for code, answer in op["responses"].items():
                content = answer.get("content")
                assert content, (verb, path, code)  # a body, described
                for media in content.values():
                    assert media.get("schema"), (verb, path, code, media)
    submit = paths["/api/jobs"]["post"]["responses"]
    assert {"201", "401", "409", "413", "422"} <= set(submit)
    assert submit["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ConfigErrorBody")


def test_messages_name_a_stage_field_and_one_union_error() -> None:
    """A stage's unknown key got "Fix: known keys: []" (the list's model was not found), and a
    value outside a union was reported under its branch's tag ("lr.bool: expected true or
    false")."""
    with pytest.raises(ConfigError) as e:
        job_from_dict({"name": "j", "stages": [{"extension_ratio": 2, "stratgy": "x"}]})
    assert e.value.field == "stages[0].stratgy"
    assert e.value.fix == "did you mean 'stages[0].strategy'?"
    with pytest.raises(ConfigError) as e:
        job_from_dict({"name": "j", "extension_ratio": 2, "strategy": "gradient",
                       "strategy_options": {"lr": [1]}})
    assert e.value.field == "strategy_options.lr"
    assert e.value.problem.startswith("expected") and "a number" in e.value.problem
    with pytest.raises(ConfigError) as e:
        job_from_dict({"name": "j", "extension_ratio": 2, "strategy": "evolution",
                       "strategy_options": {"steps": 3}})
    assert e.value.field == "strategy_options.steps" and "takes no options" in e.value.problem
