"""Needle-driven fitness (LongRoPE2): answer tokens only, deterministic, and a signal that
separates a candidate that extrapolates badly from YaRN."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from longrope_search.defaults import EMBEDDED_SEARCH_DOCS
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.needles import answer_labels, depths, needle_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import seed_candidate
from longrope_search.search.job import job_from_dict
from longrope_search.search.run import run_job

LENGTH = 1024


@pytest.fixture(scope="module")
def documents(embedded):
    return load_documents(EMBEDDED_SEARCH_DOCS, embedded.tokenizer, min_tokens=LENGTH, k=8,
                          max_tokens=LENGTH)


def test_labels_cover_exactly_the_answer_tokens_at_every_depth(embedded, documents) -> None:
    tok = embedded.tokenizer
    for doc in needle_documents(documents, tok, LENGTH, needles=4, seed=3):
        assert doc.ids.numel() == LENGTH and doc.depths == depths(4)
        labels = answer_labels(doc)
        for (start, end), number, at, lab in zip(doc.answers, doc.numbers, doc.positions,
                                                 labels, strict=True):
            scored = (lab != -100).nonzero()[:, 0]
            assert scored.tolist() == list(range(start - 1, end - 1))  # t predicts t + 1
            assert tok.decode(lab[scored]).strip() == number == tok.decode(
                doc.ids[start:end]).strip()
            sentence = tok.decode(doc.ids[at : at + 40])
            assert f"is: {number}." in sentence  # the needle holds the answer
        positions = np.array(doc.positions) / LENGTH
        assert np.all(np.diff(positions) > 0.1)  # spread over the context, in depth order
        total = sum(int((lab != -100).sum()) for lab in labels)
        assert total == sum(end - start for start, end in doc.answers)


def test_needles_are_deterministic_for_a_seed(embedded, documents) -> None:
    a = needle_documents(documents, embedded.tokenizer, LENGTH, needles=3, seed=0)
    b = needle_documents(documents, embedded.tokenizer, LENGTH, needles=3, seed=0)
    c = needle_documents(documents, embedded.tokenizer, LENGTH, needles=3, seed=1)
    assert all(x.ids.equal(y.ids) for x, y in zip(a, b, strict=True))
    assert [x.numbers for x in a] != [x.numbers for x in c]


def test_extrapolation_loses_more_needle_loss_far_from_the_question(embedded,
                                                                    documents) -> None:
    needled = needle_documents(documents, embedded.tokenizer, LENGTH, needles=4, seed=0)
    scorer = PerplexityScorer(embedded.model, embedded.geometry, [n.ids for n in needled],
                              length=LENGTH, groups=[answer_labels(n) for n in needled])

    def by_depth(name: str) -> np.ndarray:
        cand = seed_candidate(name, embedded.geometry, LENGTH / 128)
        return np.mean([scorer.score_groups([cand], i)[0][0]
                        for i in range(scorer.num_documents)], axis=0)

    none, yarn = by_depth("none"), by_depth("yarn")
    assert (none - yarn)[:2].mean() > 0.05  # the deep half: the needles farthest back
    assert (none - yarn).mean() > 0.05


def test_a_needle_job_records_losses_by_depth_and_retrieval(tmp_path, embedded) -> None:
    def spec(folder):
        return job_from_dict({
            "name": "needle", "extension_ratio": 4, "k_documents": 2, "seed": 0,
            "results_dir": str(tmp_path / folder), "space": {"n_hat": [0]},
            "scoring": {"mode": "needle", "needles": 3, "dtype": "float32"},
            "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                          "generations": 1}})

    first = run_job(spec("a"), loaded=embedded, progress=False)
    again = run_job(spec("b"), loaded=embedded, progress=False)
    a = pd.read_parquet(first.job_dir / "generations")
    b = pd.read_parquet(again.job_dir / "generations")
    assert a.candidate_id.equals(b.candidate_id) and np.allclose(a.mean_nll, b.mean_nll)
    ok = a[(a.status == "ok") & (a.operator != "parent")]
    for nll, by_depth in zip(ok.nll, ok.needle_nll, strict=True):
        by_depth = np.array([list(d) for d in by_depth])
        assert by_depth.shape == (2, 3)  # documents × depths
        # a document's loss is its answers' tokens together: between its depths' losses
        assert np.all(by_depth.min(axis=1) - 1e-9 <= nll)
        assert np.all(nll <= by_depth.max(axis=1) + 1e-9)
    rows = json.loads((first.job_dir / "comparison.json").read_text())["rows"]
    for row in rows:
        assert row["depths"] == list(depths(3)) and len(row["accuracy_by_depth"]) == 3
        assert all(0 <= v <= 1 for v in row["accuracy_by_depth"])


def test_too_many_needles_for_the_target_is_refused_up_front(tmp_path) -> None:
    bad = job_from_dict({"name": "x", "extension_ratio": 1.5, "results_dir": str(tmp_path),
                         "space": {"n_hat": [0]},
                         "scoring": {"mode": "needle", "needles": 16}})
    with pytest.raises(ConfigError, match=r"scoring\.needles"):
        run_job(bad)
    assert not (tmp_path / "x").exists()


NEEDLE_JOB = {"name": "needle", "extension_ratio": 4, "k_documents": 2, "seed": 0,
              "space": {"n_hat": [0]}, "scoring": {"mode": "needle", "needles": 2,
                                                   "dtype": "float32"},
              "search": {"population": 4, "mutations": 1, "crossovers": 1, "top_k": 2,
                            "generations": 1}}


def test_a_needle_job_through_the_service_and_on_ray(tmp_path, embedded) -> None:
    import ray
    from fastapi.testclient import TestClient

    from longrope_search.distributed import ray_evaluators
    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    manager = JobManager(tmp_path / "service", local_runner())
    try:
        assert TestClient(create_app(manager)).post("/api/jobs", json=NEEDLE_JOB
                                                    ).status_code == 201
        assert manager.wait("needle", timeout=300).state == "finished"
    finally:
        manager.close()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = job_from_dict({**NEEDLE_JOB, "results_dir": str(tmp_path / "ray")})
        run_job(spec, evaluators=ray_evaluators(2, gpus_per_worker=1), progress=False)
    finally:
        ray.shutdown()
    a = pd.read_parquet(tmp_path / "service" / "needle" / "generations")
    b = pd.read_parquet(tmp_path / "ray" / "needle" / "generations")
    assert a.candidate_id.equals(b.candidate_id)
    assert np.allclose(np.stack(a.needle_nll.map(lambda d: np.stack(d))),
                       np.stack(b.needle_nll.map(lambda d: np.stack(d))), rtol=1e-5)
