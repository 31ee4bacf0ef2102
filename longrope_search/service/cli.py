"""The service's commands: ``serve``, and ``submit``/``jobs``/``status``/``cancel``/``resume``/
``export`` over its HTTP API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_search.errors import ConfigError
from longrope_search.service.client import Client

if TYPE_CHECKING:
    from longrope_search.search.job import JobSpec


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner, ray_runner

    token = args.token or os.environ.get("LONGROPE_SEARCH_TOKEN")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {args.host} without a token: anyone who reaches this port "
              "can run jobs; set --token or LONGROPE_SEARCH_TOKEN", file=sys.stderr)
    for option, value in (("workers", args.workers), ("max-running", args.max_running)):
        if value is not None and value < 1:
            raise ConfigError(option, f"must be ≥ 1, got {value}", f"use --{option} 1 or more")
    address = args.address or os.environ.get("RAY_ADDRESS")
    check = None
    if not (args.ray or address):
        runner = local_runner()
    else:
        import ray

        from longrope_search.distributed import connect, pool_size
        from workers.scorer import check_placement

        if not address:
            print("note: a local Ray cluster listens on all interfaces (Ray cannot bind its "
                  "services to loopback) and relies on Ray's token authentication; to keep "
                  "every listener on loopback, serve without --ray", file=sys.stderr)
        connect(address)  # here, in the main thread, where Ray can install its handlers
        workers, gpus, note = pool_size(args.workers, args.gpus_per_worker,
                                        ray.cluster_resources())  # refused before serving
        print(note, file=sys.stderr)
        runner = ray_runner(workers, gpus_per_worker=gpus, address=address)

        def check(spec: JobSpec) -> None:
            check_placement(spec.scoring.device, gpus)

    manager = JobManager(args.results_dir, runner, data_roots=args.data_root or None,
                         max_running=args.max_running,
                         allow_remote_code=args.allow_remote_code, check=check)
    print(f"longrope-search: dashboard http://{args.host}:{args.port}/dashboard/  "
          f"API http://{args.host}:{args.port}/openapi.json  results {manager.results_dir}",
          file=sys.stderr)
    _import_model_code()
    try:
        uvicorn.run(create_app(manager, token=token), host=args.host, port=args.port,
                    log_level="warning")
    finally:
        manager.close()
    return 0


def _import_model_code() -> None:
    """Import transformers before serving: a submit's check reads the model's config and
    tokenizer, and transformers' lazy imports fail when two request threads race through them
    (``cannot import name 'AutoConfig'``); done once here, the first submit is also seconds
    faster."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def _spec_for_server(config: Path, name: str | None = None) -> dict[str, Any]:
    """The YAML config as the server must see it: validated here, with paths made absolute
    (they are relative to where the command runs, as for ``run``), renamed if asked."""
    import yaml

    from longrope_search.defaults import is_named_location
    from longrope_search.search.job import PATH_FIELDS, job_from_dict, load_job

    load_job(config)  # the same errors as `run`, before anything is sent
    data = yaml.safe_load(config.read_text())
    if name is not None:
        data["name"] = name
        job_from_dict(data)  # the name is checked here too
    for name in PATH_FIELDS:
        if data.get(name) is not None and not is_named_location(str(data[name])):
            data[name] = str(Path(data[name]).expanduser().resolve())
    data["seed_files"] = [str(Path(f).expanduser().resolve())
                          for f in data.get("seed_files") or []]
    data.pop("results_dir", None)
    return data


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _tokens(n: int | None) -> str:
    """Forward tokens in human units: 950, 12.3k, 1.2M, 3.4B."""
    if n is None:
        return "-"
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _cost(job: dict[str, Any]) -> str:
    """Cost spent, and of the token budget when the job has one: "1.2M/5M tok"."""
    budget = job.get("budget_tokens")
    return f"{_tokens(job.get('cost_tokens'))}{f'/{_tokens(budget)}' if budget else ''} tok"


def _line(job: dict[str, Any]) -> str:
    done = job.get("evaluations", 0) + job.get("reused", 0)
    gen = job.get("generation")
    return (f"{job['name']:<28} {job['state']:<10} gen {'-' if gen is None else gen:>3}/"
            f"{job['generations']:<3} {done:>6}/{job['budget']:<6} {_cost(job):>16} "
            f"best ppl {_num(job.get('best_ppl'))}")


def cmd_submit(args: argparse.Namespace) -> int:
    job = Client(args.server, args.token).submit(_spec_for_server(args.config, args.name))
    print(f"submitted {job['name']} ({job['state']})")
    if args.follow:
        return _follow(Client(args.server, args.token), job["name"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    for job in Client(args.server, args.token).jobs():
        print(_line(job))
    return 0


def _follow(client: Client, name: str) -> int:
    from tqdm.auto import tqdm

    from longrope_search.service.jobs import ACTIVE

    job = client.job(name)
    with tqdm(total=job["budget"], desc=name, unit="cand") as bar:
        while True:
            bar.n = job["evaluations"] + job["reused"]
            best = job.get("best_ppl")
            bar.set_postfix(state=job["state"], gen=job.get("generation"), pruned=job["pruned"],
                            cost=_cost(job),
                            best="-" if best is None else f"{best:.3f}", refresh=False)
            bar.refresh()
            if job["state"] not in ACTIVE:
                break
            time.sleep(1.0)
            job = client.job(name)
    print(_line(job))
    if job.get("error"):
        print(f"error: {job['error']}", file=sys.stderr)
    return 0 if job["state"] == "finished" else 1


def cmd_status(args: argparse.Namespace) -> int:
    client = Client(args.server, args.token)
    if args.follow:
        return _follow(client, args.job)
    job = client.job(args.job)
    print(_line(job))
    for g in job["generation_summaries"][-args.last:]:
        print(f"  generation {g['generation']:>3}: {g['new']} new ({g['pruned']} pruned, "
              f"{g['failed']} failed), best {_num(g['best_ppl'])}, median "
              f"{_num(g['median_ppl'])}")
    if job.get("error"):
        print(f"error: {job['error']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(_line(Client(args.server, args.token).cancel(args.job)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    print(_line(Client(args.server, args.token).resume(args.job)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return _export_gguf(args)
    if args.results_dir:  # straight from a job folder, no server needed
        from longrope_search.export import export_job

        short = args.results_dir / args.short_from if args.short_from else None
        data = export_job(args.results_dir / args.job, args.format, with_config=args.config,
                          short_factors=short)
    else:
        data = Client(args.server, args.token).export(args.job, args.format, config=args.config,
                                                      short_from=args.short_from)
    for note in (data.get("longrope_search") or {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        from longrope_search.io import write_json

        write_json(args.output, data)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(json.dumps(data, indent=2))
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    """A GGUF copy of ``--gguf`` with the job's factors: from a job folder, to a file."""
    from longrope_search.errors import ConfigError
    from longrope_search.gguf_export import export_gguf

    if args.output is None:
        raise ConfigError("output", "a GGUF export writes a model file",
                          "give -o OUT.gguf (and --gguf IN.gguf unless the job's model is one)")
    results = args.results_dir or Path("results")
    short = results / args.short_from if args.short_from else None
    for note in export_gguf(results / args.job, args.gguf, args.output, short_factors=short):
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None,
                   help="service URL (default $LONGROPE_SEARCH_URL or http://127.0.0.1:8321)")
    p.add_argument("--token", default=None, help="bearer token (default $LONGROPE_SEARCH_TOKEN)")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the job API and dashboard")
    p.add_argument("--host", default="127.0.0.1", help="interface (default loopback only)")
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--results-dir", type=Path, default=Path("runs"),
                   help="where jobs live; requests never reach outside it")
    p.add_argument("--data-root", type=Path, action="append", default=[],
                   help="folder that submitted model/document paths may be under (repeatable; "
                        "default the current folder); 'embedded' is always allowed")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default $LONGROPE_SEARCH_TOKEN)")
    p.add_argument("--ray", action="store_true",
                   help="score on a pool of Ray workers (a local Ray cluster unless --address); "
                        "default: in the server process, every listener on loopback")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray scorer actors per job (default: one per GPU of the cluster)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (or $RAY_ADDRESS); implies --ray")
    p.add_argument("--max-running", type=int, default=1,
                   help="jobs running at once; the others queue")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="let submitted jobs set trust_remote_code")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("submit", help="submit a YAML job config to the server")
    p.add_argument("config", type=Path)
    p.add_argument("--name", default=None,
                   help="job name instead of the config's (the same config, another run)")
    p.add_argument("--follow", action="store_true", help="then show its progress to the end")
    _client_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the server's jobs")
    _client_options(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="a job's state and generations")
    p.add_argument("job")
    p.add_argument("--follow", action="store_true", help="progress bar until the job ends")
    p.add_argument("--last", type=int, default=5, help="generations to list")
    _client_options(p)
    p.set_defaults(func=cmd_status)

    for name, func, text in (("cancel", cmd_cancel, "stop a queued or running job"),
                             ("resume", cmd_resume, "queue a cancelled or failed job again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        _client_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="factor JSON for transformers, vLLM or longrope-search, "
                       "or a GGUF model for llama.cpp")
    p.add_argument("job")
    p.add_argument("--format", choices=["hf", "vllm", "longrope", "gguf"], default="hf")
    p.add_argument("--gguf", type=Path, default=None,
                   help="gguf: the model's GGUF file to copy with the factors (-o: the new one); "
                        "default the job's model when it is a GGUF")
    p.add_argument("--config", action="store_true",
                   help="hf: the model's whole config.json, patched (drop-in)")
    p.add_argument("--short-from", default=None,
                   help="job whose λ become short_factor (a search at the original length)")
    p.add_argument("-o", "--output", type=Path, default=None, help="file (default stdout)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="read the job folder here directly instead of asking a server")
    _client_options(p)
    p.set_defaults(func=cmd_export)

