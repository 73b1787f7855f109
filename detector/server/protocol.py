"""uvicorn's HTTP/1.1 protocol (h11) with a header timeout.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but a connection that
sends nothing, or sends its request headers a byte at a time, is kept open for as long as it
likes (any data cancels the keep-alive timer), each one holding a connection of the server's
``limit_concurrency``. Here every connection must have sent its request's full headers within
``header_timeout_s`` of being opened or of its previous response, or it is closed. The body has its
own limit in the app (``ServeLimits.read_timeout_s``, answered 408).

:func:`run_server` runs an app on uvicorn with this protocol and the timeouts of its
:class:`~detector.server.ServeLimits`; ``uvicorn.run(app, http=header_timeout_protocol(10.0))`` by hand.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from .app import ServeLimits

LOG = logging.getLogger("detector.server")


class HeaderTimeoutProtocol(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request headers are not complete
    ``header_timeout_s`` seconds after it opened or after its previous response."""

    header_timeout_s: float = 10.0
    _header_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request line and all its headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same time

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            LOG.info("closing a connection whose request headers did not arrive within %g s", self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type:
    """A :class:`HeaderTimeoutProtocol` subclass with ``header_timeout_s = seconds`` (uvicorn builds
    one instance per connection from the class it is given as ``http``)."""
    if not seconds > 0:
        raise ValueError(f"header timeout must be > 0 seconds, got {seconds!r}")
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(seconds)})


def run_server(app, limits: "ServeLimits", host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` on ``host:port`` until interrupted, with ``limits.header_timeout_s`` per
    connection, a 5 s keep-alive, and at most ``4 * (workers + queue_size) + 16`` open connections
    (uvicorn answers the ones past it with a bare 503, before the app's own queue)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                limit_concurrency=4 * (limits.workers + limits.queue_size) + 16,
                http=header_timeout_protocol(limits.header_timeout_s))
