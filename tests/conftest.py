"""Shared fixtures: the embedded model is loaded once per test session."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded():
    from longrope_search.defaults import EMBEDDED_MODEL
    from longrope_search.model import load_model

    return load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")


@contextlib.contextmanager
def http_server(app) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread: its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
