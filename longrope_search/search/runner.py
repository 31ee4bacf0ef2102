"""Run a search job in this process: engine + scorer + ledger + tables + progress.

The loop is resumable by construction: the engine replays generations deterministically from the
job's seed, and every candidate already in the ledger is taken from there instead of scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.factor_file import load_factor_file
from longrope_search.io import atomic_write, write_json
from longrope_search.model import LoadedModel, load_model, read_geometry
from longrope_search.rope import Candidate, RopeGeometry, attention_factor, seed_candidate
from longrope_search.search.early_stopping import prune_rule
from longrope_search.search.evaluator import Evaluator, LocalEvaluator
from longrope_search.search.evolution import (
    OK,
    PRUNED,
    Evaluation,
    Evolution,
    Individual,
    ranked,
)
from longrope_search.search.job import JobSpec, job_from_dict
from longrope_search.search.ledger import Ledger
from longrope_search.search.space import Genome, SearchSpace, critical_dim
from longrope_search.search.tables import write_generation


@dataclass
class Plan:
    """Everything derived from a job spec before any weights are loaded."""

    spec: JobSpec
    geometry: RopeGeometry
    original_length: int
    target_length: int
    extension_ratio: float
    space: SearchSpace
    seeds: list[tuple[str, Genome]]
    attention_factor: float


def plan_job(spec: JobSpec) -> Plan:
    """Validate a job against its model's config (cheap: no weights) and build space and seeds."""
    geometry = read_geometry(spec.model_path, trust_remote_code=spec.trust_remote_code)
    L, Lp, s = spec.resolve_lengths(geometry.original_length)
    sp = spec.space
    cd = None
    if sp.longrope2:
        cd = sp.critical_dim if sp.critical_dim is not None else critical_dim(geometry)
    space = SearchSpace(num_pairs=geometry.num_pairs, extension_ratio=s, target_length=Lp,
                        lambda_min=sp.lambda_min, lambda_max=sp.lambda_max, step=sp.step,
                        strict=sp.monotone == "strict", n_hat_choices=sp.n_hat,
                        critical_dim=cd)
    seeds = [(name, space.genome_from_lambdas(seed_candidate(name, geometry, s).lambdas))
             for name in spec.seeds]
    for f in spec.seed_files:
        cand = load_factor_file(f, geometry)
        seeds.append((cand.name, space.genome_from_lambdas(cand.lambdas, cand.n_hat)))
    m = attention_factor(spec.attention_factor, s, L)
    return Plan(spec, geometry, L, Lp, s, space, seeds, m)


@dataclass
class SearchResult:
    best: Candidate
    best_evaluation: Evaluation
    job_dir: Path
    evaluations: int
    pruned: int
    reused: int
    document_evaluations: int
    seconds: float


def check_or_write_spec(spec: JobSpec) -> None:
    """A job folder belongs to one spec: resuming with a different one would mix searches."""
    job_dir = spec.job_dir
    path = job_dir / "job.yaml"
    current = spec.to_dict()
    if path.exists():
        # Read back through the spec, so keys added since (with their defaults) still match.
        previous = job_from_dict(yaml.safe_load(path.read_text())).to_dict()
        if previous != current:
            raise ConfigError("name", f"job '{spec.name}' already exists in {job_dir} with a "
                              "different spec", "use a new job name, or delete the old folder")
        return
    atomic_write(path, lambda p: p.write_text(yaml.safe_dump(current, sort_keys=False)))


def run_search(spec: JobSpec, *, evaluator: Evaluator | None = None,
               loaded: LoadedModel | None = None, progress: bool = True,
               on_generation: Callable[[int, dict[str, Any]], None] | None = None,
               on_progress: Callable[[dict[str, Any]], None] | None = None,
               ) -> SearchResult:
    """Run (or resume) a job's evolution search to the end.

    ``on_progress`` gets the running counts after every evaluation (generation, evaluations,
    pruned, reused, documents, best_ppl, budget); an exception it raises stops the search
    between two evaluations, with everything finished so far already in the ledger.
    """
    if spec.strategy != "evolution":
        from longrope_search.search.strategies import run_optuna_search

        return run_optuna_search(spec, loaded=loaded, progress=progress)
    t0 = time.time()
    plan = plan_job(spec)
    job_dir = spec.job_dir
    check_or_write_spec(spec)
    if evaluator is None:
        loaded = loaded or load_model(spec.model_path, dtype=spec.scoring.dtype,
                                      device=spec.scoring.device,
                                      trust_remote_code=spec.trust_remote_code)
        evaluator = LocalEvaluator(scorer_for(spec, plan, loaded))
    ledger = Ledger(job_dir / "ledger.journal", spec.name, plan.space)
    evals = ledger.evaluations()
    cfg = spec.evolution
    engine = Evolution(plan.space, plan.seeds, cfg, spec.seed)
    stats: dict[str, Any] = {"evaluations": 0, "pruned": 0, "reused": 0, "documents": 0,
                             "best_ppl": min((e.ppl for e in evals.values() if e.status == OK),
                                             default=float("inf"))}
    bar = tqdm(total=cfg.budget, desc=spec.name, unit="cand", disable=not progress)

    def on_result(ind: Individual, ev: Evaluation) -> None:
        ledger.record(ind, ev, plan.attention_factor)  # durable before anything else
        evals[ind.key] = ev
        stats["evaluations"] += 1
        stats["pruned"] += ev.status == PRUNED
        stats["documents"] += len(ev.nll)
        if ev.status == OK and ev.ppl < stats["best_ppl"]:
            stats["best_ppl"] = ev.ppl
        bar.update()
        bar.set_postfix(gen=gen, pruned=stats["pruned"], best=f"{stats['best_ppl']:.3f}",
                        refresh=False)
        if on_progress:
            on_progress({"generation": gen, "budget": cfg.budget, **stats})

    history: list[Individual] = []
    pop = engine.initial()
    for gen in range(cfg.generations + 1):
        rule = None
        if spec.early_stopping.enabled and history:
            es = spec.early_stopping
            rule = prune_rule([evals[i.key] for i in history if i.key in evals], cfg.top_k,
                              es.rule, margin=es.margin, z=es.z)
        todo = [i for i in pop if i.key not in evals]
        stats["reused"] += sum(1 for i in pop if i.key in evals and i.operator != "parent")
        bar.update(sum(1 for i in pop if i.key in evals and i.operator != "parent"))
        evaluator.evaluate([(i, plan.space.candidate(i.genome, plan.attention_factor))
                            for i in todo], rule, on_result)
        write_generation(job_dir / "generations", spec.name, gen, pop, evals, plan.space,
                         plan.attention_factor)
        if on_generation:
            on_generation(gen, {"population": len(pop), **stats})
        history += [i for i in pop if i.operator != "parent"]
        if gen == cfg.generations:
            break
        pop = engine.next(gen + 1, pop, evals)
    bar.close()

    best_ind = ranked(history, evals)[0]
    best = plan.space.candidate(best_ind.genome, plan.attention_factor, name="best")
    result = SearchResult(best, evals[best_ind.key], job_dir, stats["evaluations"],
                          stats["pruned"], stats["reused"], stats["documents"],
                          time.time() - t0)
    record = best_record(plan, best, evals[best_ind.key])
    record["seed_ppl"] = {name: evals[g.key].ppl for name, g in plan.seeds
                          if g.key in evals and evals[g.key].status == OK}
    if best.n_hat:  # what an inference engine (none supports n̂) will actually get
        record["search_ppl_without_n_hat"] = _ppl_without_n_hat(plan, best_ind, evals,
                                                                evaluator)
    write_json(job_dir / "best.json", record)
    return result


def _ppl_without_n_hat(plan: Plan, ind: Individual, evals: dict[str, Evaluation],
                       evaluator: Evaluator) -> float:
    """Search-document perplexity of the best λ with n̂ = 0, scored in full if the search has
    not (kept out of the ledger: it is not part of the search)."""
    genome = Genome(ind.genome.grid, 0)
    if genome.key in evals and evals[genome.key].status == OK:
        return evals[genome.key].ppl
    found: list[Evaluation] = []
    evaluator.evaluate([(Individual(genome, ind.generation, "n_hat=0", (ind.key,)),
                         plan.space.candidate(genome, plan.attention_factor))], None,
                       lambda _, ev: found.append(ev))
    return found[0].ppl


def scorer_for(spec: JobSpec, plan: Plan, loaded: LoadedModel,
               documents: Path | None = None) -> PerplexityScorer:
    docs = load_documents(documents or spec.documents_path, loaded.tokenizer,
                          min_tokens=plan.target_length, k=spec.k_documents, seed=spec.seed,
                          max_tokens=plan.target_length, text_field=spec.text_field)
    sc = spec.scoring
    return PerplexityScorer(loaded.model, plan.geometry, docs, length=plan.target_length,
                            mode=sc.mode, stride=sc.stride, batch_size=sc.batch_size)


def best_record(plan: Plan, best: Candidate, ev: Evaluation) -> dict[str, Any]:
    """The searched factors in longrope-search's own format (``longrope-search eval --factors``
    reads it)."""
    from transformers import AutoConfig

    from longrope_search.export import model_fingerprint, versions

    config = AutoConfig.from_pretrained(plan.spec.model_path,
                                        trust_remote_code=plan.spec.trust_remote_code)
    return {
        "lambdas": best.lambdas.tolist(), "n_hat": best.n_hat,
        "attention_factor": best.attention_factor,
        "original_length": plan.original_length, "target_length": plan.target_length,
        "extension_ratio": plan.extension_ratio, "search_ppl": ev.ppl,
        "search_nll": list(ev.nll), "job": plan.spec.name,
        "model": str(plan.spec.model_path), "model_fingerprint": model_fingerprint(config),
        "rope_theta": plan.geometry.base, "versions": versions(),
    }


def compare_on_documents(spec: JobSpec, plan: Plan, loaded: LoadedModel, best: Candidate,
                         documents: Path) -> list[dict[str, Any]]:
    """Perplexity of the best candidate and of each hand-made method (with its own attention
    factor) on other documents, typically held-out ones never used as fitness."""
    scorer = scorer_for(spec, plan, loaded, documents)
    s = plan.extension_ratio
    cands = [best] + [seed_candidate(n, plan.geometry, s) for n in ("pi", "ntk", "yarn")]
    rows = [{"method": r.candidate.name, "ppl": r.ppl, "mean_nll": r.mean_nll}
            for r in scorer.score(cands)]
    best_ppl = rows[0]["ppl"]
    for r in rows:
        r["gain_vs_this_pct"] = 100 * (r["ppl"] - best_ppl) / r["ppl"]
    return rows


def summarize(result: SearchResult) -> str:
    lam = result.best.lambdas
    ev = result.best_evaluation
    return (f"best: ppl {ev.ppl:.4f} (mean NLL {ev.mean_nll:.5f}) n̂={result.best.n_hat} "
            f"m={result.best.attention_factor:.4f} λ[0..{lam.size - 1}] "
            f"{np.array2string(lam, precision=2, threshold=8)}\n"
            f"{result.evaluations} evaluations ({result.pruned} pruned, {result.reused} reused "
            f"from the ledger), {result.document_evaluations} document forwards, "
            f"{result.seconds:.0f} s")


