"""Search on Ray: the coordinator hands candidates to a pool of scorer actors.

Dispatch is pipelined so that no worker waits for the coordinator: the driver asks its strategy
for a candidate whenever ``free_slots()`` says a worker has room, and each worker holds up to
two, the one it scores and the next (Ray runs an actor's tasks in the order they were sent), so
it starts the next one the moment it finishes, while the coordinator records the result it
just returned (the ledger append, with its fsync, takes milliseconds; an evaluation seconds).
Idle workers are served first. The only barrier is the strategy's own: Algorithm 1 waits for a
whole generation before it breeds the next; steady-state evolution never waits.

A worker that dies mid-evaluation (killed process, CUDA out-of-memory, lost node) is restarted
by Ray, and every task sent to it fails with a ``RayActorError`` (Ray 2.60 raises its subclass
``ActorUnavailableError`` while the actor restarts). All of them go back to the queue, but only
the one it was running (the oldest) is charged with the failure: a candidate that kills workers
``max_tries`` times is recorded as failed. The restarted worker is pinged once and gets work
again when the ping answers. A worker whose constructor fails (say, the model does not load) is
not restarted by Ray: it is retired, and when none is left the search stops with that error
instead of waiting forever. The coordinator itself keeps no state that the ledger does not:
kill it and run the job again, and it resumes where the ledger ends.

A worker counts only once it has started: the pool pings every worker when it is made, and a
worker gets candidates only when its first ping answers (its constructor, the model load, is
done). So a worker that Ray cannot place (more workers than GPUs) never holds a candidate that
would never run, and one that starts later than the others joins when it does, without the
others waiting for it. Until the first one starts the pool queues ``DEPTH`` candidates, so that
the driver waits on it. If none has started within ``start_timeout_s`` and no Ray node has what
a worker asks for, the search stops with an error that says what Ray lacks; if Ray could place
them (other jobs hold the GPUs, or the model loads slowly) it warns once and waits on, as Ray's
scheduler does. The CLI and the service refuse a pool bigger than the cluster before it starts
(:func:`check_resources`, through :func:`pool_size`, which also sizes the default pool: one
worker per GPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from longrope_search.errors import ConfigError
from longrope_search.reaper import descendants, reap_when_gone
from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evaluator import Evaluators, Finished, Work
from longrope_search.search.job import JobSpec
from longrope_search.search.plan import Plan
from longrope_search.search.trial import FAILED, Evaluation, Individual
from workers.scorer import ScorerWorker

Item = Work
log = logging.getLogger(__name__)

CPUS_PER_WORKER = 1.0  # what a scorer actor asks of Ray besides its GPUs
START_TIMEOUT_S = 300.0  # a 7B model takes minutes to load on a busy node
_EPS = 1e-9  # float slack when counting how many shares fit


def _count(x: float, unit: str) -> str:
    """``1 GPU``, ``0.5 GPU``, ``2 GPUs``, ``0 GPUs``."""
    return f"{x:g} {unit}{'' if 0 < x <= 1 else 's'}"


def _room(total: float, per_worker: float, *, whole_units: bool) -> float:
    """How many workers that ask for ``per_worker`` of a resource fit in ``total`` of it. A
    fraction of a GPU (``whole_units``) is a share of one GPU that Ray never splits across two,
    so 0.6 GPU fits once on each GPU, not 1.67 times."""
    if per_worker <= 0:
        return math.inf
    if whole_units and per_worker < 1:
        return math.floor(total + _EPS) * math.floor(1 / per_worker + _EPS)
    return math.floor(total / per_worker + _EPS)


def _gpu_share(workers: int, gpus: float) -> float:
    """The largest GPUs per worker that Ray can give each of ``workers`` out of ``gpus`` (whole
    GPUs, or a share of one GPU that divides it evenly); 0 when not even a share fits."""
    if gpus + _EPS >= workers:
        return math.floor(gpus / workers + _EPS)
    whole = math.floor(gpus + _EPS)
    return math.floor(1000 / math.ceil(workers / whole)) / 1000 if whole else 0.0


def _shortfall(workers: int, per_worker: float, total: float, room: float, unit: str) -> str:
    """Why ``workers`` workers of ``per_worker`` each do not fit in the cluster's ``total``."""
    need = workers * per_worker
    pool = f"{_count(workers, 'worker')} × {_count(per_worker, unit)}"
    if need > total + _EPS:
        return (f"{pool} need{'s' if workers == 1 else ''} {_count(need, unit)}; the Ray cluster "
                f"has {total:g}")
    return (f"{pool} do not fit the Ray cluster's {_count(total, unit)}: Ray never splits a "
            f"worker's share across two {unit}s, so they hold {room:g} such workers")


def check_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float,
                    resources: Mapping[str, float]) -> None:
    """Refuse a pool that the cluster's ``resources`` (``ray.cluster_resources()``) cannot hold
    all at once: the workers Ray cannot place would never start. Summed over the nodes, so a
    pool that passes may still not fit a node; the pool's start timeout catches that."""
    if workers < 1:
        raise ConfigError("workers", f"must be ≥ 1, got {workers}", "use --workers 1 or more")
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    room = _room(gpus, gpus_per_worker, whole_units=True)
    if workers > room:
        share = _gpu_share(workers, gpus)
        fixes = ([f"--workers {room:g} or fewer"] if room else []) + (
            [f"--gpus-per-worker {share:g}"] if share else
            ["--gpus-per-worker 0 (score on CPUs)", "a Ray cluster with GPUs (--address)"])
        raise ConfigError("workers", _shortfall(workers, gpus_per_worker, gpus, room, "GPU"),
                          "use " + ", or ".join(fixes))
    room = _room(cpus, cpus_per_worker, whole_units=False)
    if workers > room:
        fix = (f"use --workers {room:g} or fewer, or a Ray cluster with more CPUs" if room else
               f"use a Ray cluster with at least {_count(cpus_per_worker, 'CPU')} on a node")
        raise ConfigError("workers", _shortfall(workers, cpus_per_worker, cpus, room, "CPU"),
                          fix)


def pool_size(workers: int | None, gpus_per_worker: float | None,
              resources: Mapping[str, float], *,
              cpus_per_worker: float = CPUS_PER_WORKER) -> tuple[int, float, str]:
    """``(workers, gpus_per_worker, note)`` of the pool that ``--workers`` and
    ``--gpus-per-worker`` ask for on a cluster with ``resources``, checked to fit; the one
    place where the CLI and the service fill in what was not given: a GPU per worker when the
    cluster has GPUs (else CPU workers), and as many workers as the GPUs hold (one CPU worker
    on a cluster without GPUs: each loads its own copy of the model). ``note`` says what was
    chosen, for the user."""
    gpus = resources.get("GPU", 0.0)
    per = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if workers is None:
        fits = min(_room(gpus, per, whole_units=True),
                   _room(resources.get("CPU", 0.0), cpus_per_worker, whole_units=False))
        workers = max(1, int(fits)) if per > 0 else 1
    check_resources(workers, per, cpus_per_worker, resources)
    each = f", {_count(per, 'GPU')} each" if per else " on CPUs"
    note = f"ray: {_count(workers, 'worker')}{each} ({_count(gpus, 'GPU')} in the cluster)"
    return workers, per, note


def unplaceable(demand: Mapping[str, float], nodes: list[Mapping[str, float]]) -> str | None:
    """What Ray lacks to place a worker that asks for ``demand`` on any of ``nodes`` (each
    node's total resources), or None when some node could hold it (once others free it)."""
    wants = {k: v for k, v in demand.items() if v > 0}
    if any(all(node.get(k, 0.0) + _EPS >= v for k, v in wants.items()) for node in nodes):
        return None
    most = ", ".join(f"{max((n.get(k, 0.0) for n in nodes), default=0.0):g} {k}" for k in wants)
    return (f"Ray lacks what a worker asks for ({_demand(wants)}): no node has that much (the "
            f"most on one of the cluster's {_count(len(nodes), 'node')}: {most})")


def _demand(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if v > 0)


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Ray ≥ 2.59 turns token authentication on for local clusters; a client of a remote cluster
    needs its token in ``RAY_AUTH_TOKEN`` or the file from ``ray get-auth-token``.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        os.environ.pop("RAY_ADDRESS", None)  # empty: Ray would take "" for an address
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             **({} if address else init_kwargs))
    if not address:
        reap_when_gone(os.getpid(), descendants(os.getpid()))




class RayEvaluator:
    """The :class:`~longrope_search.search.evaluator.Evaluator` of a pool of Ray workers.

    ``wait_seconds`` counts the time the coordinator spent blocked waiting for workers; the rest
    of its time is its own overhead (strategy, dispatch, ledger, tables). ``start_timeout_s``
    bounds how long it waits for the first worker to start when Ray cannot place any.
    """

    DEPTH = 2  # candidates per worker: the one it scores and the next, already sent

    def __init__(self, spec: JobSpec, num_workers: int, *, gpus_per_worker: float = 1.0,
                 cpus_per_worker: float = CPUS_PER_WORKER, max_tries: int = 3,
                 worker_options: dict[str, Any] | None = None,
                 worker_cls: Any = None, start_timeout_s: float = START_TIMEOUT_S) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, not {num_workers}")
        worker_cls = worker_cls or ScorerWorker
        options = {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker,
                   "max_restarts": -1, "max_task_retries": 0, **(worker_options or {})}
        self.workers = [worker_cls.options(**options).remote(spec.to_dict())
                        for _ in range(num_workers)]
        self.demand = {"GPU": options["num_gpus"], "CPU": options["num_cpus"],
                       **options.get("resources", {})}  # what each worker asks of Ray
        self.max_tries = max_tries
        self.failures: dict[str, int] = {}  # candidate key → workers it has killed
        # first ping → a worker not started yet (constructor running, or Ray has not placed it)
        self.starting = {w.pid.remote(): i for i, w in enumerate(self.workers)}
        self.start_timeout_s = start_timeout_s
        self._start_deadline: float | None = time.monotonic() + start_timeout_s
        self.recovering: dict[ray.ObjectRef, int] = {}  # ping → index of a restarting worker
        self.retired: set[int] = set()  # workers whose constructor failed: Ray won't restart
        self.init_error: RayActorError | None = None
        self.wait_seconds = 0.0
        self._queue: deque[Item] = deque()  # submitted, not yet sent to a worker
        self._tasks: dict[ray.ObjectRef, tuple[int, Item]] = {}  # sent, not yet returned
        self._lanes: list[deque[ray.ObjectRef]] = [deque() for _ in self.workers]

    def pids(self) -> list[int]:
        """The processes of the workers that started, once those still starting have (or the
        start time is over)."""
        if self.starting:
            timeout = max(0.0, (self._start_deadline or 0.0) - time.monotonic())
            for ping in ray.wait(list(self.starting), num_returns=len(self.starting),
                                 timeout=timeout)[0]:
                self._answered(ping)
        return ray.get([self.workers[i].pid.remote() for i in self._started()])

    def throughput(self, timeout: float = 10.0) -> list[dict[str, float]]:
        """Each worker's counts; a worker that is restarting or dead is left out (its counts
        died with its process) instead of failing the job's summary, and so is one that never
        started."""
        out = []
        for i in self._started():
            try:
                out.append(ray.get(self.workers[i].throughput.remote(), timeout=timeout))
            except (RayActorError, ray.exceptions.GetTimeoutError):
                continue
        return out

    # -- the Evaluator interface ---------------------------------------------------------------
    def free_slots(self) -> int:
        """``DEPTH`` per ready worker; while none is, but some are starting, ``DEPTH`` in all,
        so that the driver has candidates to wait on (else it would take the empty pool for a
        finished search)."""
        lanes = len(self._ready()) or (1 if self.starting else 0)
        return self.DEPTH * lanes - len(self._queue) - len(self._tasks)

    def submit(self, individual: Individual, candidate: Candidate,
               rule: PruneRule | None) -> None:
        """Queue a candidate; it goes to the first worker with a free slot."""
        self._queue.append((individual, candidate, rule))
        self._dispatch()

    def pending(self) -> int:
        """Candidates queued or being scored on a worker."""
        return len(self._queue) + len(self._tasks)

    def wait(self) -> Finished:
        """Block until some candidates are back; the workers that returned them have been
        handed their next ones already."""
        finished: Finished = []
        while not finished and self.pending():
            finished = self._collect()
            self._dispatch()
        return finished

    def cancel(self) -> None:
        """Forget every candidate submitted and not returned (a stopped search): what the
        workers are scoring still runs to its end, and its result is ignored."""
        self._queue.clear()
        self._tasks.clear()
        for lane in self._lanes:
            lane.clear()

    def compare(self, best: Candidate) -> list[dict[str, Any]]:
        """Held-out comparison on a ready worker; if it dies, on another one (or on the same
        one once Ray has restarted it)."""
        for _ in range(self.max_tries * len(self.workers)):
            ready = self._ready()
            if not ready:
                if not (self.recovering or self.starting):
                    break
                self._await_ping()
                continue
            try:
                return ray.get(self.workers[ready[0]].compare.remote(best))
            except RayActorError as err:
                self._restart(ready[0], err)
        raise RuntimeError(f"no Ray worker could run the held-out comparison: {self.init_error}")

    def _await_ping(self) -> None:
        """Block until a starting or restarting worker answers its ping (or is given up)."""
        for ping in self._wait([*self.recovering, *self.starting]):
            self._answered(ping)

    def _wait(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Block until one of ``refs`` is done; return it and any others done by then. While
        there is nothing to wait on but workers that never started, wait only until the start
        deadline (see :meth:`_start_overdue`)."""
        only_starting = all(ref in self.starting for ref in refs)
        t0 = time.perf_counter()
        while True:
            timeout = None
            if only_starting and self._start_deadline is not None:
                timeout = max(0.0, self._start_deadline - time.monotonic())
            ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
            if ready:
                break
            self._start_overdue()
        self.wait_seconds += time.perf_counter() - t0
        if rest:  # whatever else is done by now, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def _start_overdue(self) -> None:
        """No worker started in time: raise if Ray cannot place one (waiting is hopeless), else
        warn once and wait on (other jobs hold what they need, or the model loads slowly)."""
        started = len(self.workers) - len(self.starting) - len(self.retired)
        head = (f"{started} of {len(self.workers)} Ray workers started within "
                f"{self.start_timeout_s:g} s")
        lack = unplaceable(self.demand, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        if lack:
            raise RuntimeError(f"{head}: {lack}")
        free = ray.available_resources()
        log.warning("%s; waiting on them: Ray can place a worker (it asks for %s; free now: "
                    "%s), so other jobs hold what it needs, or its constructor is slow", head,
                    _demand(self.demand), _demand({k: free.get(k, 0.0) for k in self.demand}))
        self._start_deadline = None

    def _live(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.retired]

    def _started(self) -> list[int]:
        return [i for i in self._live() if i not in self.starting.values()]

    def _ready(self) -> list[int]:
        return [i for i in self._started() if i not in self.recovering.values()]

    def _dispatch(self) -> None:
        """Give every idle worker a candidate, then a second one to each."""
        queue, lanes = self._queue, self._lanes
        for depth in range(1, self.DEPTH + 1):
            for i in self._ready():
                if not queue:
                    return
                if len(lanes[i]) < depth:
                    item = queue.popleft()
                    ref = self.workers[i].score.remote(*item)
                    self._tasks[ref] = (i, item)
                    lanes[i].append(ref)

    def _collect(self) -> Finished:
        """Block until some task or ping answers; return the evaluations that finished (failed
        ones included), and put back in the queue the candidates that must run again."""
        waiting = [*self._tasks, *self.recovering, *self.starting]
        if not waiting:
            raise RuntimeError("no Ray worker could start: every one failed in its "
                               f"constructor; the last error: {self.init_error}")
        finished: Finished = []
        for ref in self._wait(waiting):
            if ref in self.recovering or ref in self.starting:
                self._answered(ref)
            elif ref in self._tasks:  # else handled already, with its dead worker's others
                worker, item = self._tasks[ref]
                try:
                    finished.append((item[0], ray.get(ref)))
                except RayActorError as err:
                    self._worker_lost(worker, err, finished)
                    continue
                except RayTaskError as err:  # the scorer raised; its worker is fine
                    self._charge(item, type(err).__name__, finished)
                del self._tasks[ref]
                self._lanes[worker].remove(ref)
        return finished

    def _worker_lost(self, worker: int, err: RayActorError, finished: Finished) -> None:
        """Every task sent to a dead worker fails. Keep those it finished before dying; charge
        the oldest of the others (the one it was running) and re-queue them all.

        One case is ambiguous: a worker that dies the instant it starts a task can take the
        reply of the task it just finished with it, and that one is charged instead; an
        innocent candidate is failed only if that happens to it ``max_tries`` times.
        """
        refs = list(self._lanes[worker])
        self._lanes[worker].clear()
        answered = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        lost: list[Item] = []
        for ref in refs:
            _, item = self._tasks.pop(ref)
            if ref not in answered:
                lost.append(item)
                continue
            try:
                finished.append((item[0], ray.get(ref)))
            except RayActorError:
                lost.append(item)
            except RayTaskError as task_err:  # its own failure, before the worker died
                self._charge(item, type(task_err).__name__, finished)
        if lost and not err.actor_init_failed:  # a worker that never started: nobody's fault
            self._charge(lost.pop(0), type(err).__name__, finished)
        self._queue.extendleft(reversed(lost))
        self._restart(worker, err)

    def _answered(self, ping: ray.ObjectRef) -> None:
        """A starting or restarting worker's ping answered: to work, or ping again (retired if
        its constructor failed)."""
        pings = self.recovering if ping in self.recovering else self.starting
        worker = pings.pop(ping)
        try:
            ray.get(ping)
        except RayActorError as err:
            self._restart(worker, err)

    def _restart(self, worker: int, err: RayActorError) -> None:
        """Wait for a worker that Ray restarts, with one ping; retire one whose constructor
        failed (Ray does not restart it, and its pings would fail at once, forever)."""
        if err.actor_init_failed:
            self.retired.add(worker)
            self.init_error = err
        else:
            self.recovering[self.workers[worker].pid.remote()] = worker

    def _charge(self, item: Item, error: str, finished: Finished) -> None:
        """Count a failure against the candidate: re-queue it or, at ``max_tries`` failures,
        record it as failed."""
        key = item[0].key
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.failures[key] >= self.max_tries:
            finished.append((item[0], Evaluation(key, (), FAILED, 0, extra={"error": error})))
        else:
            self._queue.appendleft(item)

    def shutdown(self) -> None:
        """Kill the pool's workers (their GPUs return to the cluster)."""
        for w in self.workers:
            ray.kill(w)


def ray_evaluators(workers: int, *, gpus_per_worker: float = 1.0,
                   on_done: Callable[[RayEvaluator], None] | None = None) -> Evaluators:
    """A pool of ``workers`` scorer actors for each job (each stage of a chain), shut down
    when the job ends; ``on_done`` sees it first when the job ended well."""

    @contextmanager
    def evaluator(plan: Plan) -> Iterator[RayEvaluator]:
        pool = RayEvaluator(plan.spec, workers, gpus_per_worker=gpus_per_worker)
        try:
            yield pool
            if on_done is not None:
                on_done(pool)
        finally:
            pool.shutdown()

    return evaluator
