"""A service job's states: one vocabulary for ``state.json``, the API, the CLI and the dashboard
(a module of its own, so the CLI reads it without importing the search)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A job's state in the service (``state.json``, the API, the CLI, the dashboard)."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"  # running, asked to stop: it stops at its next evaluation
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BROKEN = "broken"  # its folder's files cannot be read: listed with the reason, never run


QUEUED, RUNNING, CANCELLING, FINISHED, FAILED, CANCELLED, BROKEN = State
ACTIVE = (QUEUED, RUNNING, CANCELLING)
CANCELLABLE = (QUEUED, RUNNING)  # what ``cancel`` stops
RESUMABLE = (CANCELLED, FAILED)  # what ``resume`` puts back in the queue
