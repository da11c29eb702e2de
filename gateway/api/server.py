"""The API's server: uvicorn on a thread and event loop of its own, on a socket the gateway binds itself.

The API is a guest of the gateway's process: nothing a client does may cost the pipeline more than a
bounded share. This module holds what works below FastAPI, at the socket and connection level:

- :class:`ApiServer`: serves the app on its own thread and loop, so a flood of connections or requests
  costs the API's loop, never the gateway's; binds its own socket, and when it cannot (its port
  taken) retries with backoff while ingestion goes on.
- :class:`GuardedH11Protocol` (uvicorn's h11 protocol): at most ``max_connections`` open connections
  (at the cap the :class:`AcceptGate` stops accepting, so a flood waits in the kernel's backlog
  instead of costing CPU, and idle sockets cannot exhaust the descriptors), and a connection that
  has not sent a whole request head within ``header_timeout_s`` is closed (slow or idle clients);
  uvicorn's own keep-alive timeout closes idle connections between requests.

Requests themselves are guarded one level up, in :mod:`gateway.api.guard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.api.app import create_app
from gateway.api.deps import ApiContext, ApiState
from gateway.retry import Backoff

__all__ = ["AcceptGate", "ApiServer", "GuardedH11Protocol", "guarded_protocol"]

logger = logging.getLogger(__name__)


class AcceptGate:
    """Stops taking new connections while the API is at its connection cap, and takes them again below
    90 % of it. Stopped, the kernel's listen backlog holds the next few and refuses the rest, which
    costs the gateway nothing; accepting and closing each one of a flood would cost its CPU.

    Uses asyncio's ``Server._start_serving``/``_serving`` (CPython 3.11, which firegw pins); where they
    are missing, connections over the cap are still closed at once, only not for free.
    """

    def __init__(self) -> None:
        self.servers: list[asyncio.base_events.Server] = []
        self.paused = False
        self.pauses = 0

    def pause(self, open_connections: int) -> None:
        if self.paused or not self.servers:
            return
        try:
            for server in self.servers:
                loop = server.get_loop()
                for sock in server.sockets:
                    loop.remove_reader(sock.fileno())
                server._serving = False  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            return
        self.paused = True
        self.pauses += 1
        (logger.warning if self.pauses == 1 else logger.debug)(
            "api: %d connections open, the cap: not accepting more until some close (logged once; %d times so far)",
            open_connections,
            self.pauses,
        )

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        try:
            for server in self.servers:
                server._start_serving()  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            logger.exception("api: could not take connections again")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head."""

    max_connections = 256
    header_timeout_s = 10.0
    refused = 0
    gate: AcceptGate | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) >= self.max_connections and self.gate is not None:
            self.gate.pause(len(self.connections))
        if len(self.connections) > self.max_connections:
            type(self).refused += 1
            transport.abort()
            return
        self._head_deadline: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s, self._late)

    def _late(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            deadline = getattr(self, "_head_deadline", None)
            if deadline is not None:  # a whole request head arrived: the app's own timing takes over
                deadline.cancel()
                self._head_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
        if not self.transport.is_closing():  # the next request's head is due within the same deadline
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._late)

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)
        gate = self.gate
        if gate is not None and gate.paused and len(self.connections) < self.max_connections * 0.9:
            gate.resume()


def guarded_protocol(
    *, max_connections: int, header_timeout_s: float, gate: AcceptGate | None = None
) -> type[GuardedH11Protocol]:
    """A protocol class with these limits (a subclass, so several servers in one process do not share them)."""
    return type(
        "GuardedH11",
        (GuardedH11Protocol,),
        {"max_connections": max_connections, "header_timeout_s": header_timeout_s, "refused": 0, "gate": gate},
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the gateway owns SIGINT/SIGTERM
        yield


class ApiServer:
    """uvicorn on an event loop and thread of its own, on a socket the gateway binds itself.

    The API is a guest of the process. Its loop is not the gateway's: a flood of connections or
    requests costs the API's loop, never the loop that delivers webhooks and forwards readings.
    When it cannot bind (its port taken, say) it logs once, shows ``api`` failing in health, and
    retries with backoff (1 s doubling to 30 s) while ingestion goes on; when the port frees, it
    serves with no restart. uvicorn never binds (it would ``sys.exit``).
    """

    RETRY_MIN_S = 1.0
    RETRY_MAX_S = 30.0

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.app = create_app(ctx)
        self._stage = ctx.health.stage("api")
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._gate = AcceptGate()

    def _new_server(self) -> _Server:
        s = self.ctx.settings.api
        self._gate = AcceptGate()
        protocol = guarded_protocol(
            max_connections=s.max_connections, header_timeout_s=s.header_timeout_s, gate=self._gate
        )
        return _Server(
            uvicorn.Config(
                self.app,
                log_level="critical",
                access_log=False,
                lifespan="off",
                http=protocol,
                timeout_keep_alive=max(1, int(s.keepalive_s)),
                h11_max_incomplete_event_size=16_384,
                server_header=False,
                timeout_graceful_shutdown=2,
            )
        )

    def _bind(self) -> socket.socket:
        s = self.ctx.settings.api
        host = s.host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, s.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def run(self) -> None:
        """Serve (on the API's own thread) until :meth:`stop`; a service of the gateway's loop."""
        self._stopping.clear()  # a restart by the supervisor after a failure serves again
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def main() -> None:
            failure: BaseException | None = None
            try:
                asyncio.run(self._serve())
            except BaseException as exc:  # reported to the service's task; the supervisor restarts it
                failure = exc if isinstance(exc, Exception) else RuntimeError(f"API thread ended: {exc!r}")
            loop.call_soon_threadsafe(settle, failure)

        thread = threading.Thread(target=main, name="firegw-api", daemon=True)
        thread.start()
        try:
            await done
        finally:
            self.stop()
            await asyncio.to_thread(thread.join, 10)

    async def _serve(self) -> None:
        listen = self.ctx.settings.api.listen
        backoff = Backoff(self.RETRY_MIN_S, self.RETRY_MAX_S, jitter=0.0)
        while not self._stopping.is_set():
            try:
                sock = self._bind()
            except OSError as exc:
                reason = f"cannot listen on {listen}: {exc.strerror or exc}; the API is not serving, ingestion goes on"
                if self._stage.fail(reason + f"; retrying (backoff up to {self.RETRY_MAX_S:.0f} s)"):
                    self._stage.connected = False
                await asyncio.to_thread(self._stopping.wait, backoff.next())
                continue
            backoff.reset()
            server = self._server = self._new_server()
            if self._stopping.is_set():  # a stop that came while binding
                server.should_exit = True
            if self._stage.failing is not None:
                logger.info("api: %s is free again", listen)
            self._stage.ok()
            self._stage.set_connected(True)
            logger.info("api: serving on %s", listen)
            gate = self._gate
            watch = asyncio.create_task(self._hand_servers_to_the_gate(server, gate))
            try:
                await server.serve(sockets=[sock])
            except (Exception, SystemExit) as exc:  # never let uvicorn end the gateway
                self._stage.fail(f"the API server stopped: {exc!r}; restarting")
                self._stage.connected = False
            finally:
                watch.cancel()
                sock.close()
            if not self._stopping.is_set():
                await asyncio.to_thread(self._stopping.wait, backoff.delay(1))

    @staticmethod
    async def _hand_servers_to_the_gate(server: _Server, gate: AcceptGate) -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        gate.servers = list(getattr(server, "servers", []))

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        state: ApiState = self.app.state.api
        state.sandbox.close()
