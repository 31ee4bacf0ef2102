"""The commands around job folders: ``jobs``, ``status`` and ``export`` read them (through a
server when one answers, else straight from the folder), ``serve`` runs the HTTP API and
dashboard, and ``submit``, ``cancel`` and ``resume`` change its queue.

As in :mod:`longrope_search.cli`, each command imports what it runs inside its function, so
the commands that only talk to a server never load torch, the job spec's models or Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tqdm.auto import tqdm

from longrope_search.defaults import RESULTS_DIR
from longrope_search.deploy import EXPORT_FORMATS, ExportFormat
from longrope_search.errors import ConfigError
from longrope_search.ray_flags import ray_options
from longrope_search.service.client import Client
from longrope_search.service.states import ACTIVE, BROKEN, FINISHED

if TYPE_CHECKING:
    from longrope_search.search.job import JobSpec
    from longrope_search.service.jobs import Job


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from longrope_search.service.app import create_app
    from longrope_search.service.http import REQUEST_TIMEOUT, uvicorn_options
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner, ray_runner

    token = args.token or os.environ.get("LONGROPE_SEARCH_TOKEN")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {args.host} without a token: anyone who reaches this port "
              "can run jobs; set --token or LONGROPE_SEARCH_TOKEN", file=sys.stderr)
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise ConfigError("request-timeout", f"must be > 0, got {args.request_timeout}",
                          "use e.g. --request-timeout 10")
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

    sock = _bind(args.host, args.port)  # before any job resumes: a busy port starts nothing
    _import_model_code()  # before the runner threads start resumed jobs
    manager = JobManager(args.results_dir, runner, data_roots=args.data_root or None,
                         max_running=args.max_running,
                         allow_remote_code=args.allow_remote_code, check=check)
    print(banner(args.host, args.port, manager.results_dir, token), file=sys.stderr)
    try:  # on the socket bound above (uvicorn.run's fd), so the port cannot be lost meanwhile
        uvicorn.run(create_app(manager, token=token), fd=sock.fileno(), log_level="warning",
                    **uvicorn_options(args.request_timeout or REQUEST_TIMEOUT))
    finally:
        manager.close()
        sock.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now so that a port in use is refused first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError("port", f"cannot listen on {host}:{port} ({e.strerror})",
                          "stop what uses it (another longrope-search serve?) or pass "
                          "--port N") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def banner(host: str, port: int, results: Path, token: str | None) -> str:
    """What ``serve`` prints first: where the dashboard, the API and the jobs are."""
    url = f"http://{host}:{port}"
    dashboard = f"{url}/dashboard/" + ("?token=<TOKEN>" if token else "")
    line = f"longrope-search: dashboard {dashboard}  API {url}/openapi.json  results {results}"
    if token:
        line += ("\n  every request needs the token: 'Authorization: Bearer <TOKEN>' (the CLI: "
                 "--token or $LONGROPE_SEARCH_TOKEN; the dashboard: ?token=<TOKEN> once)")
    return line


def _import_model_code() -> None:
    """Import transformers before serving: a submit's check reads the model's config and
    tokenizer, and transformers' lazy imports fail when two threads (requests, runners) race
    through them (``cannot import name 'AutoConfig'``); done once here, the first submit is
    also seconds faster."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def _spec_for_server(config: Path, name: str | None = None) -> dict[str, Any]:
    """The YAML config as the server must see it: validated here, with paths made absolute
    (they are relative to where the command runs, as for ``run``), renamed if asked."""
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
    if job["state"] == BROKEN:
        return f"{job['name']:<28} {job['state']:<10} {job.get('error')}"
    done = job.get("candidates", 0)
    gen = job.get("generation")
    return (f"{job['name']:<28} {job['state']:<10} gen {'-' if gen is None else gen:>3}/"
            f"{job['generations']:<3} {done:>6}/{job['budget']:<6} {_cost(job):>16} "
            f"best ppl {_num(job.get('best_ppl'))}")


class FolderJobs:
    """The read commands (``jobs``, ``status``, ``export``) on a results folder, no server:
    the jobs as their files describe them (a job that ``run`` is running shows as running)."""

    def __init__(self, results_dir: Path) -> None:
        if not results_dir.is_dir():
            raise ConfigError("results-dir", f"{results_dir} is not a folder",
                              f"give the folder the jobs were run in (default {RESULTS_DIR})")
        self.results_dir = results_dir

    def _jobs(self) -> list[Job]:
        from longrope_search.service.jobs import jobs_on_disk

        return sorted(jobs_on_disk(self.results_dir), key=lambda j: j.submitted)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's summary, read from its folder."""
        return [j.summary() for j in self._jobs()]

    def job(self, name: str) -> dict[str, Any]:
        """One job's detail, as ``GET /api/jobs/{name}`` answers it."""
        return self._job(name).detail()

    def _job(self, name: str) -> Job:
        from longrope_search.search.job import JOB_NAME
        from longrope_search.service.jobs import BrokenJob, job_on_disk

        folder = self.results_dir / name
        plain = re.match(JOB_NAME, name) and folder.is_dir()  # a name, never a path
        job = job_on_disk(folder) if plain else None
        if isinstance(job, BrokenJob):
            raise ConfigError("job", f"{name} is broken: {job.reason}",
                              f"repair or remove {folder}")
        if job is not None:
            return job
        raise ConfigError("job", f"no job {name!r} in {self.results_dir}",
                          f"list them: longrope-search jobs --results-dir {self.results_dir}")

    def export(self, name: str, fmt: str, *, config: bool = False,
               short_from: str | None = None) -> dict[str, Any]:
        """The job's factors in ``fmt``, as ``GET /api/jobs/{name}/export`` answers."""
        from longrope_search.export import export_job

        short = self.folder(short_from) if short_from else None
        return export_job(self.folder(name), fmt, with_config=config, short_factors=short)

    def best(self, name: str) -> dict[str, Any]:
        """The finished job's ``best.json``."""
        return self._job(name).files.finished_best()

    def folder(self, name: str) -> Path:
        """The job's folder."""
        return self._job(name).dir


Source = Client | FolderJobs


def _source(args: argparse.Namespace, job: str | None = None) -> Source:
    """Where a read command looks: ``--results-dir``; else ``--server`` (or
    ``$LONGROPE_SEARCH_URL``); else the default folder when it holds the job, or (for
    ``jobs``) when no server answers at the default URL; else that server."""
    if args.results_dir:
        return FolderJobs(args.results_dir)
    client = Client(args.server, args.token)
    if args.server or os.environ.get("LONGROPE_SEARCH_URL") or not RESULTS_DIR.is_dir():
        return client
    if job is not None:
        return FolderJobs(RESULTS_DIR) if (RESULTS_DIR / job / "job.yaml").is_file() else client
    return client if client.answers() else FolderJobs(RESULTS_DIR)


def cmd_submit(args: argparse.Namespace) -> int:
    job = Client(args.server, args.token).submit(_spec_for_server(args.config, args.name))
    print(f"submitted {job['name']} ({job['state']})")
    if args.follow:
        return _follow(Client(args.server, args.token), job["name"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    source = _source(args)
    jobs = source.jobs()
    where = source.results_dir if isinstance(source, FolderJobs) else source.url
    if not jobs:
        print(f"no jobs in {where}")
        return 0
    print(f"jobs in {where}:")
    print(f"{'name':<28} {'state':<10} {'generation':<11} {'candidates':<13} {'cost':>16} "
          "best ppl")
    for job in jobs:
        print(_line(job))
    return 0


def _follow(client: Source, name: str) -> int:
    job = client.job(name)
    tokens = job.get("budget_tokens")  # the bar counts what `run`'s does: tokens if budgeted
    with tqdm(total=tokens or job["budget"], desc=name, unit="tok" if tokens else "cand",
              unit_scale=bool(tokens)) as bar:
        while True:
            bar.n = min(bar.total, (job.get("cost_tokens") or 0) if tokens else
                        job["candidates"])
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
    return 0 if job["state"] == FINISHED else 1


def cmd_status(args: argparse.Namespace) -> int:
    client = _source(args, args.job)
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
    from longrope_search.io import output_file, write_json

    if args.output is not None:
        output_file(args.output)  # before anything is read or converted
    source = _source(args, args.job)
    if args.format == ExportFormat.GGUF:
        return _export_gguf(args, source)
    data = source.export(args.job, args.format, config=args.config, short_from=args.short_from)
    for note in (data.get("longrope_search") or {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        write_json(args.output, data)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(json.dumps(data, indent=2))
    return 0


def _export_gguf(args: argparse.Namespace, source: Source) -> int:
    """A GGUF copy of ``--gguf`` (or the job's GGUF model) with the job's factors, to a file;
    then the llama.cpp command line that runs it as the job measured it."""
    from longrope_search.gguf_export import export_gguf, llamacpp_command

    if args.output is None:
        raise ConfigError("output", "a GGUF export writes a model file",
                          "give -o OUT.gguf (and --gguf IN.gguf unless the job's model is one)")
    if isinstance(source, FolderJobs):
        short = source.folder(args.short_from) if args.short_from else None
        notes = export_gguf(source.folder(args.job), args.gguf, args.output,
                            short_factors=short)
    elif args.gguf is not None:
        raise ConfigError("gguf", "a server exports the job's own GGUF model, not a local file",
                          "drop --gguf, or export from the job folder with --results-dir DIR")
    else:
        notes = source.export_gguf(args.job, args.output, short_from=args.short_from)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}\nrun it: {llamacpp_command(source.best(args.job), args.output)}",
          file=sys.stderr)
    return 0


def _client_options(p: argparse.ArgumentParser, *, reads: bool = True) -> None:
    p.add_argument("--server", default=None,
                   help="service URL (default $LONGROPE_SEARCH_URL or http://127.0.0.1:8321)")
    if reads:
        p.add_argument("--results-dir", type=Path, default=None,
                       help=f"read the job folders here, no server (default: {RESULTS_DIR} "
                            "when it holds the job, else the server)")
    p.add_argument("--token", default=None, help="bearer token (default $LONGROPE_SEARCH_TOKEN)")


def add_result_commands(sub: Any) -> None:
    """The commands that read job folders (or a server's jobs) and export their factors: they
    work without a server."""
    p = sub.add_parser("jobs", help=f"list the jobs (of a server, or in {RESULTS_DIR}/ when none "
                       "answers)")
    _client_options(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="a job's state and generations")
    p.add_argument("job")
    p.add_argument("--follow", action="store_true", help="progress bar until the job ends")
    p.add_argument("--last", type=int, default=5, help="generations to list")
    _client_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="factor JSON for transformers, vLLM or longrope-search, "
                       "or a GGUF model for llama.cpp")
    p.add_argument("job")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=ExportFormat.HF.value)
    p.add_argument("--gguf", type=Path, default=None,
                   help="gguf: the model's GGUF file to copy with the factors (-o: the new one); "
                        "default the job's model when it is a GGUF")
    p.add_argument("--config", action="store_true",
                   help="hf: the model's whole config.json, patched (drop-in)")
    p.add_argument("--short-from", default=None,
                   help="job whose λ become short_factor (a search at the original length)")
    p.add_argument("-o", "--output", type=Path, default=None, help="file (default stdout)")
    _client_options(p)
    p.set_defaults(func=cmd_export)


def add_service_commands(sub: Any) -> None:
    """The server, and the commands that change its queue."""
    p = sub.add_parser("serve", help="run the job API and dashboard")
    p.add_argument("--host", default="127.0.0.1", help="interface (default loopback only)")
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help="where jobs live; requests never reach outside it")
    p.add_argument("--data-root", type=Path, action="append", default=[],
                   help="folder that submitted model/document paths may be under (repeatable; "
                        "default the current folder); 'embedded' is always allowed")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default $LONGROPE_SEARCH_TOKEN)")
    ray_options(p, per=" per job")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds a client has to send a whole request before the connection "
                        "is closed (default 10)")
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
    _client_options(p, reads=False)
    p.set_defaults(func=cmd_submit)

    for name, func, text in (("cancel", cmd_cancel, "stop a queued or running job"),
                             ("resume", cmd_resume, "queue a cancelled or failed job again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        _client_options(p, reads=False)
        p.set_defaults(func=func)
