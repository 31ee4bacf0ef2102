"""A job's folder: the one module that knows its layout and reads its files.

::

    <results>/<job>/
        job.yaml                  the spec (written once; a rerun must match it)
        ledger.journal            every finished evaluation, appended as it finishes
        generations/0003.parquet  the factor tables, one per generation (one dataset:
                                  ``pd.read_parquet(".../generations")``)
        best.json                 the best factors and their provenance (the job finished)
        comparison.json           the best against PI, NTK and YaRN on held-out documents
        state.json                the service's view: state, progress, error, times
        lock                      held (flock) by the one process running the job; its pid
    <results>/<job>-short/        its short-factor recovery job (longrope-search recover)

A chained job (``stages:``) keeps each stage as a job folder of its own, except that the stages'
tables are part of the chain's one dataset (``pd.read_parquet`` of ``generations`` gives
``stage`` and ``generation`` columns)::

    <results>/<chain>/
        job.yaml, best.json, comparison.json     the chain's spec; the last long stage's results
        stages/01-4x/                            a stage: job.yaml, ledger.journal, best.json, …
        seeds/01-4x.json                         the previous stage's best, mapped to its ratio
        generations/stage-01/0003.parquet

The driver, the service, the reports and the exports name these files through :class:`JobDir`
only. Throughout the code ``job_dir`` is the folder's ``Path``; a :class:`JobDir` is never
called ``job_dir``. Jobs written before schema version 4 keep their tables Hive-partitioned
(``generation=0003/part-0.parquet``, ``stage=01/…``): read as they are, moved to this layout
(:func:`longrope_search.search.tables.migrate`) when such a job is resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from longrope_search.errors import ConfigError
from longrope_search.io import LockHeld, atomic_write, take_lock
from longrope_search.io import lock_holder as held_by
from longrope_search.search.job import JobSpec, load_job

TABLE_SUFFIX = ".parquet"
LEGACY_PART = "part-0.parquet"  # before schema version 4: generation=NNNN/part-0.parquet
RECOVERY_SUFFIX = "-short"  # a long job's short-factor recovery job: <job>-short beside it


@dataclass(frozen=True)
class JobDir:
    path: Path
    tables_root: Path | None = None  # where its tables live, if not in it (a chain's stage)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, spec: JobSpec) -> JobDir:
        """The folder of a job spec; a chain's stage keeps its tables in the chain's dataset."""
        if spec.stage is None:
            return cls(spec.job_dir)
        chain = cls(Path(spec.results_dir).parent)
        return cls(spec.job_dir, chain.stage_tables(spec.stage.index))

    @property
    def name(self) -> str:
        """The job's name (its folder's)."""
        return self.path.name

    # -- paths ----------------------------------------------------------------------------------
    @property
    def spec(self) -> Path:
        """The job's spec as it was claimed (``job.yaml``)."""
        return self.path / "job.yaml"

    @property
    def ledger(self) -> Path:
        """The journal of every finished evaluation."""
        return self.path / "ledger.journal"

    @property
    def generations(self) -> Path:
        """The factor tables, one Parquet file per generation."""
        return self.tables_root or self.path / "generations"

    # -- a chained job --------------------------------------------------------------------------
    @property
    def stages(self) -> Path:
        """A chain's stage folders."""
        return self.path / "stages"

    def recovery(self, best: dict[str, Any] | None = None) -> JobDir:
        """The folder of this job's short-factor recovery: a chain's short stage (``best``
        names it), else the job ``<job>-short`` beside it. It may not exist (yet)."""
        where = best.get("recovery") if best else None
        if where:
            return JobDir(self.path / where)
        return JobDir(self.path.parent / f"{self.name}{RECOVERY_SUFFIX}")

    def stage_tables(self, index: int) -> Path:
        """Stage ``index``'s tables, inside the chain's dataset."""
        return self.generations / f"stage-{index:02d}"

    def stage_seed(self, name: str) -> Path:
        """The seed candidate a stage hands to the next (``seeds/<name>.json``)."""
        return self.path / "seeds" / f"{name}.json"

    @property
    def best(self) -> Path:
        """The finished job's best factors (``best.json``)."""
        return self.path / "best.json"

    @property
    def comparison(self) -> Path:
        """The held-out comparison by prompt length (``comparison.json``)."""
        return self.path / "comparison.json"

    @property
    def state(self) -> Path:
        """The service's record of the job (``state.json``)."""
        return self.path / "state.json"

    @property
    def lock(self) -> Path:
        """The lock a running process holds."""
        return self.path / "lock"

    @property
    def gguf_export(self) -> Path:
        """The service's GGUF export of a job whose model is a GGUF file."""
        return self.path / "export.gguf"

    def remove_temporary(self) -> list[Path]:
        """Delete the temporary files of writes cut off by a kill (``.<name>.*.tmp``, see
        :func:`longrope_search.io.atomic_write`); return them."""
        found = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in found:
            p.unlink(missing_ok=True)
        return found

    def table(self, generation: int) -> Path:
        """Generation ``generation``'s table."""
        return self.generations / f"{generation:04d}{TABLE_SUFFIX}"

    def tables(self) -> list[tuple[int, Path]]:
        """The generations whose table exists, in order; a chain's, stage after stage, numbered
        on across stages (see :meth:`stage_of`)."""
        stages = sorted(self.generations.glob("stage-*")) or \
            sorted(self.generations.glob("stage=*"))
        if not stages:
            return _tables_in(self.generations)
        out: list[tuple[int, Path]] = []
        for folder in stages:
            out += [(len(out) + i, path) for i, (_, path) in enumerate(_tables_in(folder))]
        return out

    def legacy_tables(self) -> list[Path]:
        """Tables in the Hive layout of schema versions 1–3, to be moved by ``migrate``."""
        return sorted(self.generations.glob(f"**/generation=*/{LEGACY_PART}"))

    @staticmethod
    def stage_of(table: Path) -> int | None:
        """The chain stage a table belongs to (None outside a chain)."""
        folder = (table.parent.parent if table.name == LEGACY_PART else table.parent).name
        for prefix in ("stage-", "stage="):
            if folder.startswith(prefix):
                return int(folder.removeprefix(prefix))
        return None

    @staticmethod
    def generation_of(table: Path) -> int:
        """The generation number a table's path gives (either layout)."""
        if table.name == LEGACY_PART:
            return int(table.parent.name.split("=", 1)[1])
        return int(table.name.removesuffix(TABLE_SUFFIX))

    # -- readers --------------------------------------------------------------------------------
    def read_best(self) -> dict[str, Any] | None:
        """``best.json``, or None before the job has finished."""
        return _read_json(self.best)

    def read_comparison(self) -> dict[str, Any] | None:
        """``comparison.json``, or None when there is none."""
        return _read_json(self.comparison)

    def read_state(self) -> dict[str, Any] | None:
        """``state.json``, or None for a job no server ran."""
        return _read_json(self.state)

    def finished_best(self) -> dict[str, Any]:
        """``best.json`` of a finished job, or an error saying why there is none."""
        if not self.spec.is_file():
            raise ConfigError("job", f"{self.path} is not a job folder (no job.yaml)",
                              "give the folder a search wrote, runs/<job>")
        best = self.read_best()
        if best is None:
            raise ConfigError("job", f"{self.name} has not finished (no best.json yet)",
                              "wait for the search to end, or resume it")
        return best


def _tables_in(generations: Path) -> list[tuple[int, Path]]:
    out = []
    for path in [*generations.glob(f"*{TABLE_SUFFIX}"),
                 *generations.glob(f"generation=*/{LEGACY_PART}")]:
        try:
            out.append((JobDir.generation_of(path), path))
        except ValueError:
            continue
    return sorted(out)


def stage_name(index: int, label: str) -> str:
    """A chain's stage folder: 01-4x, 02-8x, 03-short."""
    return f"{index:02d}-{label}"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


class JobBusy(ConfigError):
    """Another process is running this job."""


@contextlib.contextmanager
def running(folder: JobDir) -> Iterator[None]:
    """Hold the job's lock while it runs: a second process on the same job (another ``run``, a
    second server) is refused here, before it loads weights or writes."""
    folder.path.mkdir(parents=True, exist_ok=True)
    try:
        fd = take_lock(folder.lock)
    except LockHeld as held:
        raise JobBusy("name", f"job '{folder.name}' is running in another process (pid "
                      f"{held.holder})", "wait for it to end (or stop it), then run the same "
                      "command again to resume") from None
    try:
        yield
    finally:
        os.close(fd)


def lock_holder(folder: JobDir) -> str | None:
    """The pid of the process running the job, or None; reads only."""
    return held_by(folder.lock)


def check_claim(folder: JobDir, spec: JobSpec) -> None:
    """Refuse a spec that differs from the one the folder already holds: resuming with a
    different spec would mix two searches. Where the results folder is (``results_dir``) is
    not part of the job, so ``runs`` and ``$PWD/runs`` are the same job. Reads only."""
    if not folder.spec.exists():
        return
    try:  # read back through the spec, so keys added since (with their defaults) still match
        previous = load_job(folder.spec).to_dict()
    except ConfigError as e:
        raise ConfigError("name", f"job '{folder.name}' exists in {folder.path}, but its "
                          f"job.yaml cannot be read ({e.field}: {e.problem})",
                          "repair or delete that folder, or use a new job name") from None
    differ = differences(_without_location(previous), _without_location(spec.to_dict()))
    if differ:
        raise ConfigError("name", f"job '{folder.name}' already exists in {folder.path} "
                          f"with a different spec ({'; '.join(differ)})",
                          "use a new job name, or delete the old folder")


def differences(before: Any, after: Any, at: str = "", most: int = 4) -> list[str]:
    """Where two specs differ, as ``key: before → after`` lines (the first ``most``)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(before.keys() | after.keys()):
            where = f"{at}.{key}" if at else str(key)
            out += differences(before.get(key), after.get(key), where, most - len(out))
            if len(out) >= most:
                break
        return out[:most]
    return [] if before == after else [f"{at}: {before!r} there, {after!r} here"]


def claim(folder: JobDir, spec: JobSpec) -> None:
    """Write the job's spec, or check that the folder holds the same one (:func:`check_claim`)."""
    check_claim(folder, spec)
    if not folder.spec.is_file():
        atomic_write(folder.spec,
                     lambda p: p.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False)))


def _without_location(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "results_dir"}
