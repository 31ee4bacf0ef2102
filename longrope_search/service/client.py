"""A small HTTP client of the service API, for the CLI (standard library only)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8321"


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
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", e.reason)
            except (json.JSONDecodeError, AttributeError):
                detail = e.reason
            raise ApiError(e.code, f"{e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise ApiError(0, f"cannot reach the server at {self.url} ({e.reason}); start it "
                              "with `longrope-search serve` or pass --server") from None

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/jobs", spec)

    def jobs(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/jobs")

    def job(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/jobs/{_quote(name)}")

    def cancel(self, name: str) -> dict[str, Any]:
        return self.request("POST", f"/api/jobs/{_quote(name)}/cancel")

    def resume(self, name: str) -> dict[str, Any]:
        return self.request("POST", f"/api/jobs/{_quote(name)}/resume")

    def export(self, name: str, fmt: str, *, config: bool = False,
               short_from: str | None = None) -> dict[str, Any]:
        query = f"?format={fmt}&config={str(config).lower()}"
        if short_from:
            query += f"&short_from={_quote(short_from)}"
        return self.request("GET", f"/api/jobs/{_quote(name)}/export{query}")


def _quote(name: str) -> str:
    return urllib.request.quote(name, safe="")
