"""``longrope-search`` command line.

Each command imports what it runs inside its own function: torch, transformers, pydantic,
pyarrow and Ray take about 2 s to load, and ``--help`` or a mistyped flag answers in 0.15 s.
"""

from __future__ import annotations

import argparse
import errno
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_search import __version__
from longrope_search.defaults import EMBEDDED_HELDOUT_DOCS, EMBEDDED_MODEL, RESULTS_DIR
from longrope_search.errors import ConfigError
from longrope_search.evaluation.modes import TRUNCATE, WINDOW_MODES
from longrope_search.factor_file import load_factor_file
from longrope_search.ray_flags import on_ray, ray_options
from longrope_search.rope import SEED_NAMES
from longrope_search.service.cli import add_result_commands, add_service_commands
from longrope_search.service.client import ApiError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from longrope_search.search.evaluator import Evaluator, Evaluators
    from longrope_search.search.job import JobSpec
    from longrope_search.search.plan import Plan


def _int_list(field: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(field, f"{text!r} is not a comma-separated list of integers",
                          "write e.g. 128,256,512") from None
    if not values or min(values) < 2:
        raise ConfigError(field, f"needs lengths ≥ 2, got {text!r}", "write e.g. 128,256,512")
    return values


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SEED_NAMES]
    if unknown:
        raise ConfigError("methods", f"unknown method(s) {unknown}", f"use any of {SEED_NAMES}")
    return methods


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(EMBEDDED_MODEL),
                   help="local Hugging Face model folder, .gguf file or package:NAME/FILE "
                        "(default: the embedded model)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where the device computes it "
                   "natively, else fp16 on old GPUs and fp32 on CPUs), float32, bfloat16, "
                   "float16, or bf16, fp16, fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--attn-implementation", default="sdpa",
                   help="transformers' attention kernel: sdpa, flash_attention_2 (needs "
                        "flash-attn), eager or flex_attention")
    p.add_argument("--remove-sliding-window", action="store_true",
                   help="score a sliding-window model (Mistral-7B-v0.1) with full attention")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model folder's own Python code (only for folders you trust)")


def _load(args: argparse.Namespace):  # -> LoadedModel
    """The model of ``eval`` and ``passkey``, as their common options say."""
    from longrope_search.model import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device,
                      attn_implementation=args.attn_implementation,
                      remove_sliding_window=args.remove_sliding_window,
                      trust_remote_code=args.trust_remote_code)


def _print_table(rows: list[dict], value: str, fmt: str) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    cell = {(r["method"], r["length"]): r[value] for r in rows}
    width = max(10, *(len(m) + 2 for m in methods))
    print(f"{'method':<{width}}" + "".join(f"{n:>12}" for n in lengths))
    for m in methods:
        print(f"{m:<{width}}" + "".join(f"{cell[m, n]:>12{fmt}}" for n in lengths))


def _at_least_one(args: argparse.Namespace, *names: str) -> None:
    """Refuse a count option below 1 (``--k 0`` scored nothing, ``--stride 0`` looped)."""
    for name in names:
        value = getattr(args, name)
        if isinstance(value, int) and value < 1:
            flag = name.replace("_", "-")
            raise ConfigError(flag, f"must be ≥ 1, got {value}", f"give --{flag} 1 or more")


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity by length for the seeds and any factor files."""

    from longrope_search.evaluation.documents import load_documents
    from longrope_search.evaluation.sweep import perplexity_by_length
    from longrope_search.model import read_geometry
    from longrope_search.model.identity import versions
    from longrope_search.model.source import ModelSource

    # Everything cheap is checked before the model is loaded.
    _at_least_one(args, "k", "stride", "max_tokens", "batch_size")
    geometry = read_geometry(args.model, trust_remote_code=args.trust_remote_code)
    L = geometry.original_length
    lengths = (_int_list("lengths", args.lengths) if args.lengths
               else [L, 2 * L, 4 * L, 8 * L])
    methods = _methods(args.methods)
    if args.fixed_ratio is not None and not (math.isfinite(args.fixed_ratio)
                                             and args.fixed_ratio >= 1):
        raise ConfigError("fixed-ratio", f"must be a ratio ≥ 1, got {args.fixed_ratio}",
                          "give the extension ratio s of the deployed config, e.g. 8")
    factors = _factor_files(args.factors, geometry, lengths)
    documents_source = args.documents or EMBEDDED_HELDOUT_DOCS
    out = args.out or RESULTS_DIR / "eval" / ModelSource.of(args.model).name
    tokenizer = ModelSource.of(args.model).tokenizer(args.trust_remote_code)
    try:  # documents missing or too short: refused before the weights load
        docs = load_documents(documents_source, tokenizer, min_tokens=max(lengths), k=args.k,
                              seed=args.documents_seed,
                              max_tokens=max(lengths) if args.mode == TRUNCATE
                              else args.max_tokens, text_field=args.text_field)
    except ConfigError as e:
        raise ConfigError("documents", e.problem, e.fix) from None

    t0 = time.time()
    print(f"loading {args.model} …", file=sys.stderr)
    loaded = _load(args)
    rows = perplexity_by_length(loaded.model, geometry, docs, lengths, methods=methods,
                                candidates=factors, mode=args.mode, stride=args.stride,
                                batch_size=args.batch_size, fixed_ratio=args.fixed_ratio)
    seeds = (f"seeds configured for s = {args.fixed_ratio:g} at every length, as deployed"
             if args.fixed_ratio else "seeds tuned to each length's own ratio ℓ/L")
    files = "; factor files as they are at every length, with their n̂" if factors else ""
    print(f"\nperplexity ({args.mode}, {len(docs)} documents, {loaded.dtype}, trained L = {L}; "
          f"{seeds}{files}):")
    _print_table(rows, "ppl", ".3f")

    _write_outputs(out, "eval", rows, {
        "command": args.command_line,
        "model": str(args.model), "documents": str(documents_source), "k": args.k,
        "documents_seed": args.documents_seed, "mode": args.mode, "stride": args.stride,
        "dtype": str(loaded.dtype),
        "fixed_ratio": args.fixed_ratio,
        "device": str(loaded.device), "original_length": L, "lengths": lengths,
        "seconds": round(time.time() - t0, 1), "versions": versions()})
    return 0


def _factor_files(paths: list[Path], geometry, lengths: list[int]) -> list:  # -> [Candidate]
    """The factor files of ``--factors``, checked against the model and the lengths."""
    factors = [load_factor_file(f, geometry) for f in paths]
    for path, cand in zip(paths, factors, strict=True):
        if cand.n_hat >= max(lengths):
            raise ConfigError(f"factors ({path.name}).n_hat", f"{cand.n_hat} is not below the "
                              f"longest evaluated length {max(lengths)}, so the factors would "
                              "change nothing", "evaluate longer lengths, or use a smaller n_hat")
    return factors


def _write_outputs(out: Path, name: str, rows: list[dict], meta: dict) -> None:
    """``<name>.parquet``, ``.csv`` (the rows) and ``.json`` (the run and the rows) in ``out``."""
    import pyarrow as pa

    from longrope_search.io import write_json, write_table

    table = pa.Table.from_pylist(rows)
    write_table(out / f"{name}.parquet", table)
    write_table(out / f"{name}.csv", table)
    write_json(out / f"{name}.json", {**meta, "rows": rows})
    print(f"\nwrote {out / name}.parquet, .csv and .json")


def cmd_passkey(args: argparse.Namespace) -> int:
    """Passkey retrieval accuracy by length for the seeds and any factor files."""
    from longrope_search.evaluation.passkey import passkey_accuracy
    from longrope_search.model import read_geometry
    from longrope_search.model.identity import versions
    from longrope_search.model.source import ModelSource
    from longrope_search.rope import seed_candidate

    _at_least_one(args, "trials")
    geometry = read_geometry(args.model, trust_remote_code=args.trust_remote_code)
    L = geometry.original_length
    lengths = _int_list("lengths", args.lengths) if args.lengths else [L, 2 * L, 4 * L, 8 * L]
    methods = _methods(args.methods)
    factors = _factor_files(args.factors, geometry, lengths)
    out = args.out or RESULTS_DIR / "passkey" / ModelSource.of(args.model).name
    loaded = _load(args)
    rows, trials = [], []
    for length in lengths:
        cands = [(m, seed_candidate(m, geometry, max(1.0, length / L), length=length))
                 for m in methods] + [(f.name, f) for f in factors]
        for name, cand in cands:
            got = passkey_accuracy(loaded.model, loaded.tokenizer, geometry, cand, [length],
                                   trials=args.trials, seed=args.seed)
            trials += [{"method": name, **t} for t in got]
            rows.append({"method": name, "length": length,
                         "accuracy": sum(t["correct"] for t in got) / len(got)})
    print(f"\npasskey retrieval accuracy ({args.trials} trials at each of 5 depths; trained "
          f"L = {L}):")
    _print_table(rows, "accuracy", ".2f")
    if not any(r["accuracy"] for r in rows if r["method"] == "none" and r["length"] <= L):
        print(f"\nnote: the unmodified model retrieves no passkey within its trained length "
              f"L = {L}, so it cannot do this task at all (the embedded test model, 4 layers "
              "trained on Python code, cannot): these figures say nothing about the factors. "
              "Use a model that retrieves passkeys at L.")
    _write_outputs(out, "passkey", trials, {
        "command": args.command_line, "model": str(args.model), "original_length": L,
        "lengths": lengths, "trials": args.trials, "seed": args.seed, "accuracy": rows,
        "versions": versions()})
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run or resume a search job, then compare its best factors with PI, NTK and YaRN."""
    from longrope_search.search.job import load_job

    spec = load_job(args.config)
    if args.results_dir:
        spec = spec.with_results_dir(str(args.results_dir))
    return _search(spec, args)


def cmd_recover(args: argparse.Namespace) -> int:
    """Search the short factors of a finished long job (short-context recovery)."""
    from longrope_search.export import recovery_gain
    from longrope_search.search.jobdir import JobDir, check_claim
    from longrope_search.search.recovery import recovery_spec

    changes: dict = {}
    if args.strategy:
        changes["strategy"] = args.strategy
    if args.evaluations is not None:  # 0 is refused by the spec, never ignored
        changes["budget"] = {"evaluations": args.evaluations}
    spec = recovery_spec(args.job, **changes)
    try:
        check_claim(JobDir(spec.job_dir), spec)
    except ConfigError as e:  # "use a new job name" cannot be done: recover names the job
        raise ConfigError(e.field, e.problem, f"run recover with the options it was started "
                          f"with to resume it, or delete {spec.job_dir} to start over") from None
    code = _search(spec, args)
    gain = recovery_gain(spec.job_dir)
    export = f"longrope-search export {args.job.name} --results-dir {args.job.parent}"
    if gain is None or gain[0] < gain[1]:
        print(f"\nexports of {args.job.name} now carry these short factors: {export}")
    else:
        print(f"\nwarning: these short factors are not better than ones on held-out documents "
              f"({gain[0]:.4f} against {gain[1]:.4f}), so exports of {args.job.name} keep ones "
              f"({export} --short-from {spec.name} attaches them anyway)")
    return code


def _search(spec: JobSpec, args: argparse.Namespace) -> int:
    from longrope_search.search.run import run_job, summarize

    if args.workers is not None and args.workers < 1:  # before Ray starts
        raise ConfigError("workers", f"must be ≥ 1, got {args.workers}", "use --workers 1 or more")
    if on_ray(args) and args.gpus_per_worker:  # before Ray starts
        from workers.scorer import check_placement  # imports Ray: only for a Ray run

        check_placement(spec.scoring.device, args.gpus_per_worker)
    def announce(plan: Plan) -> None:  # checked, before any weights load
        lengths = "" if spec.stages else \
            f"L = {plan.original_length} → L' = {plan.target_length} tokens, "
        print(f"job {spec.name}: {lengths}{_describe(spec)}", file=sys.stderr)
        for note in plan.notes:
            print(note, file=sys.stderr)

    result = run_job(spec, evaluators=_ray_evaluators(args) if on_ray(args) else None,
                     progress=not args.no_progress, on_plan=announce)
    docs = result.comparison_documents
    if docs.is_absolute() and docs.is_relative_to(Path.cwd()):
        docs = docs.relative_to(Path.cwd())
    which = "held-out" if spec.heldout_path else "search"
    print(summarize(result))
    print(f"\non {which} documents ({docs}); {result.semantics}:")
    print(comparison_table(result.comparison))
    print(f"\nfactor tables: {result.tables}  (pandas.read_parquet)")
    print(f"best factors: {result.best_file}")
    return 0


def comparison_table(rows: list[dict]) -> str:
    """The held-out comparison as a table: perplexity by length, and the gain at L'."""
    lengths = list(rows[0].get("ppl_by_length", {}))
    width = max(len(r["method"]) for r in rows)
    head = f"  {'method':<{width}} " + "".join(f"{n:>10}" for n in lengths) + \
        f"{'at L′':>10}  best is lower by"
    lines = [head]
    for r in rows:
        cells = "".join(f"{r['ppl_by_length'][n]:10.2f}" for n in lengths)
        gain = "" if r["method"] == rows[0]["method"] else f"{r['gain_vs_this_pct']:.2f}%"
        lines.append(f"  {r['method']:<{width}} {cells}{r['ppl']:10.4f}  {gain}")
    return "\n".join(lines)


def _describe(spec: JobSpec) -> str:
    """One line on what a job searches (lengths, strategy, budget), read from the spec."""
    budget = f"{spec.evaluation_budget} evaluations"
    if spec.budget.tokens:
        budget += f" or {spec.budget.tokens / 1e6:g}M forward tokens"
    if spec.stages:
        return f"{len(spec.stages)} stages ({' → '.join(s.label for s in spec.stages)})"
    if spec.factors == "short":
        return (f"short factors at {spec.target_length or 'L'} tokens under m = "
                f"{spec.attention_factor}, strategy {spec.strategy}, budget {budget}")
    ratio = f"s = {spec.extension_ratio:g}" if spec.extension_ratio else \
        f"L' = {spec.target_length}"
    return f"{ratio}, strategy {spec.strategy}, budget {budget}, for deploy: {spec.deploy}"


def _ray_evaluators(args: argparse.Namespace) -> Evaluators:
    """A Ray pool per job (per stage of a chain) that reports its workers when it is done.
    Ray starts when the first pool opens, after the job's checks; a pool the cluster cannot
    hold is refused then, before any weights load."""
    from longrope_search.distributed import RayEvaluator, connect, pool_size, ray_evaluators

    def report(pool: RayEvaluator) -> None:
        for t in pool.throughput():
            print(f"worker {t['worker']}: {t['candidates']} candidates, "
                  f"{t['candidates_per_second']:.2f}/s busy", file=sys.stderr)

    pools: list[Evaluators] = []

    def evaluators(plan: Plan) -> AbstractContextManager[Evaluator]:
        if not pools:
            import ray

            connect(args.address)
            workers, gpus, note = pool_size(args.workers, args.gpus_per_worker,
                                            ray.cluster_resources())
            print(note, file=sys.stderr)
            pools.append(ray_evaluators(workers, gpus_per_worker=gpus, on_done=report))
        return pools[0](plan)

    return evaluators


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true")
    ray_options(p, per="")


COMMANDS = """commands, by what they do:
  search   run, recover                    search a job's factors (long, then short ones)
  measure  eval, passkey                   perplexity or passkey retrieval by length
  results  jobs, status, export            read job folders (or a server); export factors
  service  serve, submit, cancel, resume   the HTTP API and dashboard, and its queue
every command reads and writes runs/ unless told otherwise (--results-dir, --out)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longrope-search", description=__doc__,
                                     epilog=COMMANDS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_search_commands, _measure_commands, add_result_commands, add_service_commands):
        add(sub)
    return parser


def _search_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="run or resume a search job from a YAML config")
    p.add_argument("config", type=Path)
    p.add_argument("--results-dir", type=Path, default=None,
                   help=f"override the config's results_dir (default {RESULTS_DIR})")
    _search_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("recover", help="search the short factors of a finished long job "
                       "(short-context recovery), as the job <JOB>-short beside it")
    p.add_argument("job", type=Path, help="the long job's folder, e.g. runs/embedded-8x")
    p.add_argument("--strategy", default=None, help="default: the long job's")
    p.add_argument("--evaluations", type=int, default=None,
                   help="budget in candidates (default: the long job's)")
    _search_options(p)
    p.set_defaults(func=cmd_recover)


def _measure_commands(sub: Any) -> None:
    p = sub.add_parser("eval", help="perplexity by length for PI, NTK, YaRN and factor files")
    _common(p)
    p.add_argument("--documents", type=Path, default=None,
                   help="folder of .txt, .jsonl, .parquet, or a saved tokenized Arrow dataset "
                        "(default: the embedded model's held-out documents)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--lengths", default=None, help="comma-separated (default L,2L,4L,8L)")
    p.add_argument("--fixed-ratio", type=float, default=None, metavar="S",
                   help="build the seeds once for s = S and apply them at every length (what "
                        "a deployed config does); default: each length's own ratio")
    p.add_argument("--methods", default="none,pi,ntk,yarn",
                   help=f"comma-separated seeds from {', '.join(SEED_NAMES)}")
    p.add_argument("--factors", type=Path, nargs="*", default=[],
                   help="factor JSON files (longrope-search export or a longrope config)")
    p.add_argument("--k", type=int, default=8, help="number of documents")
    p.add_argument("--documents-seed", "--seed", dest="documents_seed", type=int, default=0,
                   help="which documents are picked (a job's documents_seed; --seed is the old "
                        "spelling)")
    p.add_argument("--mode", choices=WINDOW_MODES, default=TRUNCATE)
    p.add_argument("--stride", type=int, default=256, help="sliding-window stride")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="sliding mode: keep at most this many tokens per document")
    p.add_argument("--batch-size", default="auto",
                   type=lambda v: v if v == "auto" else int(v),
                   help="candidates per forward (auto: by free GPU memory, 1 on CPU)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {RESULTS_DIR}/eval/<model>)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("passkey", help="passkey retrieval accuracy by length, for the seeds "
                       "and factor files")
    _common(p)
    p.add_argument("--lengths", default=None, help="comma-separated prompt lengths in tokens "
                   "(default L,2L,4L,8L)")
    p.add_argument("--methods", default="none,pi,ntk,yarn",
                   help=f"comma-separated seeds from {', '.join(SEED_NAMES)}, each tuned to the "
                        "length's own ratio")
    p.add_argument("--factors", type=Path, nargs="*", default=[],
                   help="factor JSON files (longrope-search export or a longrope config), "
                        "applied as they are at every length")
    p.add_argument("--trials", type=int, default=5, help="passkeys per length and depth")
    p.add_argument("--seed", type=int, default=0, help="which passkeys and filler are drawn")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {RESULTS_DIR}/passkey/<model>)")
    p.set_defaults(func=cmd_passkey)


def file_error(e: OSError) -> str:
    """An operating system's refusal as a message: the file, the reason, what to check."""
    where = f"{e.filename}: " if e.filename else ""
    fix = {errno.ENOSPC: "free space on that disk, or write elsewhere (--results-dir, -o)",
           errno.EACCES: "make the folder writable for this user, or write elsewhere",
           errno.EROFS: "write elsewhere (--results-dir, -o): that file system is read-only",
           errno.ENOTDIR: "a part of that path is a file, not a folder: give another path",
           errno.EISDIR: "that path is a folder: give a file path"}.get(
        e.errno or 0, "check that path: it exists, is writable and its disk has room")
    return f"{where}{e.strerror or e}. Fix: {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["longrope-search", *argv])
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if 400 <= e.status < 500 else 1
    except OSError as e:  # a read-only or full disk, a path through a file: no traceback
        print(f"error: {file_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = (f": every finished evaluation is in the job's ledger; run `{args.command_line}`"
                  " again to resume") if args.func in (cmd_run, cmd_recover) else ""
        print(f"\ninterrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["build_parser", "main"]
