"""A small HTTP client of the service API, for the CLI (standard library only)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longrope_search.deploy import ExportFormat

DEFAULT_URL = "http://127.0.0.1:8321"
NOTES_HEADER = "X-Longrope-Notes"  # a GGUF export's notes (a JSON list), beside the file


class ApiError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Client:
    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("LONGROPE_SEARCH_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("LONGROPE_SEARCH_TOKEN")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; its JSON answer (an error answer raises :class:`ApiError`)."""
        with self._open(method, path, body) as resp:
            return json.loads(resp.read() or b"null")

    def answers(self) -> bool:
        """Whether a server answers at this URL (within a second)."""
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=1.0):
                return True
        except urllib.error.HTTPError:  # it answered (401 without the token)
            return True
        except (urllib.error.URLError, OSError):
            return False

    def download(self, path: str, to: Path) -> list[str]:
        """Stream a file response into ``to`` (atomically); the notes it came with."""
        from longrope_search.io import atomic_write  # io loads pyarrow: not for every command

        with self._open("GET", path) as resp:
            atomic_write(to, lambda tmp: shutil.copyfileobj(resp, tmp.open("wb"), 1 << 20))
            return json.loads(resp.headers.get(NOTES_HEADER) or "[]")

    @contextlib.contextmanager
    def _open(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", e.reason)
            except (json.JSONDecodeError, AttributeError):
                detail = e.reason
            raise ApiError(e.code, f"{e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise ApiError(0, f"cannot reach the server at {self.url} ({e.reason}); start it "
                              "with `longrope-search serve`, pass --server URL, or read a "
                              "results folder directly with --results-dir DIR") from None
        with resp:
            yield resp

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/jobs``: queue a job."""
        return self.request("POST", "/api/jobs", spec)

    def jobs(self) -> list[dict[str, Any]]:
        """``GET /api/jobs``: every job's summary."""
        return self.request("GET", "/api/jobs")

    def job(self, name: str) -> dict[str, Any]:
        """``GET /api/jobs/{name}``: one job's detail."""
        return self.request("GET", f"/api/jobs/{_quote(name)}")

    def cancel(self, name: str) -> dict[str, Any]:
        """``POST /api/jobs/{name}/cancel``."""
        return self.request("POST", f"/api/jobs/{_quote(name)}/cancel")

    def resume(self, name: str) -> dict[str, Any]:
        """``POST /api/jobs/{name}/resume``."""
        return self.request("POST", f"/api/jobs/{_quote(name)}/resume")

    def export(self, name: str, fmt: str, *, config: bool = False,
               short_from: str | None = None) -> dict[str, Any]:
        """``GET /api/jobs/{name}/export``: the factors in a JSON format."""
        return self.request("GET", _export_path(name, fmt, config, short_from))

    def export_gguf(self, name: str, to: Path, *, short_from: str | None = None) -> list[str]:
        """The job's GGUF model with its factors, written to ``to``; the export's notes."""
        return self.download(_export_path(name, ExportFormat.GGUF, False, short_from), to)

    def best(self, name: str) -> dict[str, Any]:
        """``GET /api/jobs/{name}/best``: the finished job's ``best.json``."""
        return self.request("GET", f"/api/jobs/{_quote(name)}/best")


def _export_path(name: str, fmt: str, config: bool, short_from: str | None) -> str:
    query = f"?format={fmt}&config={str(config).lower()}"
    if short_from:
        query += f"&short_from={_quote(short_from)}"
    return f"/api/jobs/{_quote(name)}/export{query}"


def _quote(name: str) -> str:
    return urllib.request.quote(name, safe="")
