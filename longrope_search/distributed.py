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
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evaluator import Evaluators, Finished, Work
from longrope_search.search.job import JobSpec
from longrope_search.search.trial import FAILED, Evaluation, Individual

Item = Work


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Ray ≥ 2.59 turns token authentication on for local clusters; a client of a remote cluster
    needs its token in ``RAY_AUTH_TOKEN`` or the file from ``ray get-auth-token``.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             **({} if address else init_kwargs))


class RayEvaluator:
    """The :class:`~longrope_search.search.evaluator.Evaluator` of a pool of Ray workers.

    ``wait_seconds`` counts the time the coordinator spent blocked waiting for workers; the rest
    of its time is its own overhead (strategy, dispatch, ledger, tables).
    """

    DEPTH = 2  # candidates per worker: the one it scores and the next, already sent

    def __init__(self, spec: JobSpec, num_workers: int, *, gpus_per_worker: float = 1.0,
                 cpus_per_worker: float = 1.0, max_tries: int = 3,
                 worker_options: dict[str, Any] | None = None,
                 worker_cls: Any = None) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, not {num_workers}")
        if worker_cls is None:
            from workers.scorer import ScorerWorker as worker_cls

        options = {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker,
                   "max_restarts": -1, "max_task_retries": 0, **(worker_options or {})}
        self.workers = [worker_cls.options(**options).remote(spec.to_dict())
                        for _ in range(num_workers)]
        self.max_tries = max_tries
        self.failures: dict[str, int] = {}  # candidate key → workers it has killed
        self.recovering: dict[ray.ObjectRef, int] = {}  # ping → index of a restarting worker
        self.retired: set[int] = set()  # workers whose constructor failed: Ray won't restart
        self.init_error: RayActorError | None = None
        self.wait_seconds = 0.0
        self._queue: deque[Item] = deque()  # submitted, not yet sent to a worker
        self._tasks: dict[ray.ObjectRef, tuple[int, Item]] = {}  # sent, not yet returned
        self._lanes: list[deque[ray.ObjectRef]] = [deque() for _ in self.workers]

    def pids(self) -> list[int]:
        return ray.get([self.workers[i].pid.remote() for i in self._live()])

    def throughput(self, timeout: float = 10.0) -> list[dict[str, float]]:
        """Each worker's counts; a worker that is restarting or dead is left out (its counts
        died with its process) instead of failing the job's summary."""
        out = []
        for i in self._live():
            try:
                out.append(ray.get(self.workers[i].throughput.remote(), timeout=timeout))
            except (RayActorError, ray.exceptions.GetTimeoutError):
                continue
        return out

    # -- the Evaluator interface ---------------------------------------------------------------
    def free_slots(self) -> int:
        return self.DEPTH * len(self._ready()) - len(self._queue) - len(self._tasks)

    def submit(self, individual: Individual, candidate: Candidate,
               rule: PruneRule | None) -> None:
        self._queue.append((individual, candidate, rule))
        self._dispatch()

    def pending(self) -> int:
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

    def compare(self, best: Candidate, documents: Path) -> list[dict[str, Any]]:
        """Held-out comparison on a ready worker; if it dies, on another one (or on the same
        one once Ray has restarted it)."""
        for _ in range(self.max_tries * len(self.workers)):
            ready = self._ready()
            if not ready:
                if not self.recovering:
                    break
                self._await_recovery()
                continue
            try:
                return ray.get(self.workers[ready[0]].compare.remote(best, str(documents)))
            except RayActorError as err:
                self._restart(ready[0], err)
        raise RuntimeError(f"no Ray worker could run the held-out comparison: {self.init_error}")

    def _await_recovery(self) -> None:
        """Block until a restarting worker answers its ping (or is given up)."""
        ready, _ = ray.wait(list(self.recovering), num_returns=1)
        self._recovered(ready[0])

    def _live(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.retired]

    def _ready(self) -> list[int]:
        return [i for i in self._live() if i not in self.recovering.values()]

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
        waiting = [*self._tasks, *self.recovering]
        if not waiting:
            raise RuntimeError("no Ray worker could start: every one failed in its "
                               f"constructor; the last error: {self.init_error}")
        t0 = time.perf_counter()
        ready, rest = ray.wait(waiting, num_returns=1)
        self.wait_seconds += time.perf_counter() - t0
        if rest:  # whatever else is done by now, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        finished: Finished = []
        for ref in ready:
            if ref in self.recovering:
                self._recovered(ref)
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

    def _recovered(self, ping: ray.ObjectRef) -> None:
        """A restarting worker's ping answered: back to work, or ping again."""
        worker = self.recovering.pop(ping)
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
        for w in self.workers:
            ray.kill(w)


def ray_evaluators(workers: int, *, gpus_per_worker: float = 1.0,
                   on_done: Callable[[RayEvaluator], None] | None = None) -> Evaluators:
    """A pool of ``workers`` scorer actors for each job (each stage of a chain), shut down
    when the job ends; ``on_done`` sees it first when the job ended well."""

    @contextmanager
    def evaluator(spec: JobSpec) -> Iterator[RayEvaluator]:
        pool = RayEvaluator(spec, workers, gpus_per_worker=gpus_per_worker)
        try:
            yield pool
            if on_done is not None:
                on_done(pool)
        finally:
            pool.shutdown()

    return evaluator
