"""What the API and the dashboard show of a job, read from its Parquet tables and best.json.

Columns go out as arrays (one list per column), the shape chart libraries plot directly. Rows of
carried-over parents (operator ``parent``) count in a generation's best and median, but each
candidate appears once in the per-candidate columns: in the generation that made it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from longrope_search.search.tables import generation_path


def _generation_files(job_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for d in (job_dir / "generations").glob("generation=*"):
        try:
            g = int(d.name.split("=", 1)[1])
        except ValueError:
            continue
        if generation_path(job_dir / "generations", g).is_file():
            out.append((g, generation_path(job_dir / "generations", g)))
    return sorted(out)


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def generation_summaries(job_dir: Path) -> list[dict[str, Any]]:
    """Per generation: candidates by status, best and median perplexity of the population."""
    out = []
    for g, path in _generation_files(job_dir):
        t = pq.read_table(path, columns=["operator", "status", "ppl"]).to_pydict()
        ok = [p for p, s in zip(t["ppl"], t["status"], strict=True) if s == "ok"]
        new = [s for s, op in zip(t["status"], t["operator"], strict=True) if op != "parent"]
        out.append({"generation": g, "population": len(t["status"]), "new": len(new),
                    "ok": new.count("ok"), "pruned": new.count("pruned"),
                    "failed": new.count("failed"),
                    "best_ppl": _finite(min(ok)) if ok else None,
                    "median_ppl": _finite(float(np.median(ok))) if ok else None})
    return out


def generation_rows(job_dir: Path, generation: int) -> list[dict[str, Any]] | None:
    """Every row of one generation's table (None when that generation has no table yet)."""
    path = generation_path(job_dir / "generations", generation)
    if not path.is_file():
        return None
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["timestamp"] = r["timestamp"].isoformat() if r["timestamp"] else None
        r["generation"] = generation
        for k in ("ppl", "mean_nll"):
            r[k] = _finite(r[k])
    return rows


def candidates(job_dir: Path) -> dict[str, list[Any]]:
    """Each candidate once, in the generation that made it: columns for a scatter plot."""
    cols: dict[str, list[Any]] = {"generation": [], "candidate_id": [], "operator": [],
                                  "status": [], "ppl": [], "n_hat": []}
    for g, path in _generation_files(job_dir):
        t = pq.read_table(path, columns=["candidate_id", "operator", "status", "ppl",
                                         "n_hat"]).to_pydict()
        for i, op in enumerate(t["operator"]):
            if op == "parent":
                continue
            cols["generation"].append(g)
            for k in ("candidate_id", "operator", "status", "n_hat"):
                cols[k].append(t[k][i])
            cols["ppl"].append(_finite(t["ppl"][i]))
    return cols


def best(job_dir: Path, top_k: int) -> dict[str, Any] | None:
    """The best candidate so far (best.json once finished), the seeds' λ and the top-k's n̂."""
    files = _generation_files(job_dir)
    if not files:
        return None
    rows = [r for _, p in files for r in pq.read_table(p).to_pylist()
            if r["status"] == "ok" and r["operator"] != "parent"]
    if not rows:
        return None
    rows.sort(key=lambda r: (r["mean_nll"], r["candidate_id"]))
    top = rows[0]
    seeds = {r["operator"].removeprefix("seed:"): [float(v) for v in r["lambdas"]]
             for r in rows if r["operator"].startswith("seed:")}
    for r in pq.read_table(files[0][1]).to_pylist():  # a pruned or failed seed still has λ
        if r["operator"].startswith("seed:"):
            seeds.setdefault(r["operator"].removeprefix("seed:"),
                             [float(v) for v in r["lambdas"]])
    out: dict[str, Any] = {
        "candidate_id": top["candidate_id"], "lambdas": [float(v) for v in top["lambdas"]],
        "n_hat": top["n_hat"], "attention_factor": top["attention_factor"],
        "ppl": _finite(top["ppl"]), "nll": top["nll"], "operator": top["operator"],
        "seed_lambdas": seeds, "top_k_n_hat": [r["n_hat"] for r in rows[:top_k]],
        "final": False,
    }
    record = job_dir / "best.json"
    if record.is_file():
        data = json.loads(record.read_text())
        out.update({k: data[k] for k in ("search_ppl", "seed_ppl", "search_ppl_without_n_hat",
                                         "original_length", "target_length", "extension_ratio")
                    if k in data})
        out["final"] = True
    comparison = job_dir / "comparison.json"
    if comparison.is_file():
        out["heldout"] = json.loads(comparison.read_text())
    return out
