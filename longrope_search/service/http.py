"""How the server treats slow or idle clients: every socket it holds is bounded in time and
in number.

uvicorn closes a keep-alive connection left idle after a response, but a client that connects
and sends nothing, or sends its request a byte at a time, holds its socket for as long as it
likes (a slowloris). :class:`BoundedH11` gives every request a deadline instead: the whole
request (head and body) must have arrived ``request_timeout`` seconds after the connection
opened or after the previous response, or the connection is closed. ``uvicorn_options`` adds
a bound on connections at once (past it, uvicorn answers 503) and on a request head's size.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT = 10.0  # seconds for a whole request (the largest body is 1 MiB)
MAX_CONNECTIONS = 256  # open connections at once; uvicorn answers 503 past it
MAX_HEAD_BYTES = 64 * 1024  # a request line and headers


class BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on every request (see the module)."""

    request_timeout: float = REQUEST_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        """Restart the deadline for the connection's next request."""
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _expire(self) -> None:
        """Close the connection unless its request has arrived whole (it is being answered)."""
        if self.conn.their_state is not h11.DONE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(request_timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments that bound slow clients."""
    protocol = type("BoundedH11", (BoundedH11,), {"request_timeout": request_timeout})
    return {"http": protocol, "limit_concurrency": MAX_CONNECTIONS,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES, "timeout_keep_alive": 5}
