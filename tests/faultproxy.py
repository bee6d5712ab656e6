"""A fault-injecting TCP proxy on loopback, for tests of network faults.

The ideas are toxiproxy's: put the proxy between a process and Redis, then make
the link misbehave the way production links do, without touching either end.

- :meth:`FaultProxy.stall` — the connections open now stop forwarding, both ways;
  their sockets stay open (no FIN, no RST): a partition, a stuck NAT or load
  balancer. Whatever either side sends meanwhile is held by the proxy.
- :meth:`FaultProxy.stall_new` — connections opened from now on forward nothing:
  accepted and then silent (``accept=True``), or not accepted at all
  (``accept=False``: the listening backlog shrinks to its minimum, so the kernel
  completes at most a connection or two and drops the SYNs of the others, whose
  connects time out).
- :meth:`FaultProxy.reset` — every open connection (or only the stalled ones) is
  reset: SO_LINGER 0 then close, an RST to both ends.
- :meth:`FaultProxy.heal` — forward again. ``flush=True``: the stalled connections
  resume and deliver what was held (a partition that healed). ``flush=False``: the
  stalled connections stay dead forever, held data dropped, sockets still open (the
  link was replaced: a failover to a new address), and only connections opened
  from now on forward.

TCP keepalive cannot notice any of this: the proxy's own kernel acknowledges
every byte and keepalive probe, so what a test of a stall exercises is the
clients' own deadlines.

The proxy runs its own event loop in a background thread, so it keeps
forwarding whatever the test does meanwhile (blocking calls, subprocesses,
another event loop), and its control methods are plain calls, usable from
async and sync code alike::

    async with FaultProxy("127.0.0.1", redis_port) as proxy:   # or: with ...
        client = Redis.from_url(proxy.url)
        proxy.stall()
        ...
        proxy.heal(flush=False)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

__all__ = ["FaultProxy"]

T = TypeVar("T")
BACKLOG = 128
CHUNK = 65536
State = Literal["flowing", "stalled", "dead"]


def _rst(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One proxied connection: the accepted socket and the one to the upstream."""

    def __init__(self, client: socket.socket, state: State) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.gate = asyncio.Event()  # set while the link forwards
        self.state: State = state
        if state == "flowing":
            self.gate.set()
        self.task: asyncio.Task[None] | None = None

    def set_state(self, state: State) -> None:
        self.state = state
        if state == "flowing":
            self.gate.set()
        else:
            self.gate.clear()


class FaultProxy:
    """A TCP proxy from ``host:port`` (default 127.0.0.1, a free port) to
    ``upstream_host:upstream_port`` whose links can be stalled, reset and healed.

    Counters (plain ints, read from any thread): ``accepted`` connections,
    ``bytes_up`` (client to upstream) and ``bytes_down`` forwarded, ``resets``
    (links reset by :meth:`reset`); :attr:`open`, :attr:`stalled` and
    :attr:`dead` count the links open now by state.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._want_port = port
        self.port = 0
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.resets = 0
        self._links: set[_Link] = set()
        self._new_state: State = "flowing"  # what links accepted from now on start as
        self._accepting = True
        self._lsock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def to(cls, url: str) -> FaultProxy:
        """A proxy to the host and port of a ``redis://`` URL (not started)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379)

    @property
    def url(self) -> str:
        """``redis://host:port`` of the proxy."""
        return f"redis://{self.host}:{self.port}"

    @property
    def open(self) -> int:
        return len(self._links)

    @property
    def stalled(self) -> int:
        return sum(1 for link in list(self._links) if link.state == "stalled")

    @property
    def dead(self) -> int:
        return sum(1 for link in list(self._links) if link.state == "dead")

    # -- lifecycle (any thread) --------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen and start forwarding (the proxy's loop runs in a daemon thread)."""
        if self._loop is not None:
            raise RuntimeError("FaultProxy already started")
        lsock = socket.create_server((self.host, self._want_port), backlog=BACKLOG)
        lsock.setblocking(False)
        self._lsock = lsock
        self.port = lsock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._resume_accepting())
        return self

    def close(self) -> None:
        """Reset every link, stop listening and end the proxy's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            if self._lsock is not None:
                self._lsock.close()
            self._loop = self._thread = self._lsock = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> FaultProxy:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- faults (any thread but the proxy's own) ---------------------------------------

    def stall(self) -> int:
        """Stop forwarding on every connection open now (sockets stay open);
        returns how many were stalled."""
        return self._call(self._stall())

    def stall_new(self, *, accept: bool = True) -> None:
        """Forward nothing on connections opened from now on: accept them and hold
        them silent (``accept=True``), or stop accepting (``accept=False``)."""
        self._call(self._stall_new(accept))

    def partition(self) -> None:
        """:meth:`stall` and :meth:`stall_new`: nothing gets through at all."""
        self.stall_new()
        self.stall()

    def reset(self, *, only_stalled: bool = False) -> int:
        """Reset (RST) every open connection, or only the stalled and dead ones;
        returns how many."""
        return self._call(self._reset(only_stalled))

    def heal(self, *, flush: bool = True) -> None:
        """Forward again: new connections forward, and stalled ones resume delivering
        what was held (``flush=True``) or stay dead and silent (``flush=False``)."""
        self._call(self._heal(flush))

    # -- inside the proxy's loop -------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stall(self) -> int:
        chosen = [link for link in self._links if link.state == "flowing"]
        for link in chosen:
            link.set_state("stalled")
        return len(chosen)

    async def _stall_new(self, accept: bool) -> None:
        self._new_state = "stalled"
        if not accept and self._accepting:
            self._accepting = False
            assert self._lsock is not None and self._acceptor is not None
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._lsock.listen(0)

    async def _heal(self, flush: bool) -> None:
        self._new_state = "flowing"
        for link in list(self._links):
            if link.state == "stalled":
                link.set_state("flowing" if flush else "dead")
        if not self._accepting:
            assert self._lsock is not None
            if not flush:  # what queued while not accepting was blackholed: it stays so
                while True:
                    try:
                        client, _ = self._lsock.accept()
                    except BlockingIOError:
                        break
                    self._adopt(client, "dead")
            self._lsock.listen(BACKLOG)
            await self._resume_accepting()

    async def _reset(self, only_stalled: bool) -> int:
        chosen = [
            link for link in self._links if not only_stalled or link.state in ("stalled", "dead")
        ]
        for link in chosen:
            if link.task is not None:
                link.task.cancel()
        await asyncio.gather(*(link.task for link in chosen if link.task), return_exceptions=True)
        self.resets += len(chosen)
        return len(chosen)

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resume_accepting(self) -> None:
        self._accepting = True
        self._acceptor = self._spawn(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._lsock is not None
        while True:
            client, _ = await loop.sock_accept(self._lsock)
            self._adopt(client, self._new_state)

    def _adopt(self, client: socket.socket, state: State) -> None:
        client.setblocking(False)
        self.accepted += 1
        link = _Link(client, state)
        self._links.add(link)
        link.task = self._spawn(self._serve(link))

    async def _serve(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        graceful = False
        try:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            link.upstream = upstream
            upstream.setblocking(False)
            try:
                await loop.sock_connect(upstream, self.upstream)
            except OSError:
                return  # the upstream is down: the client gets an RST, as from a real proxy
            up = asyncio.ensure_future(self._pump(link, link.client, upstream, up=True))
            down = asyncio.ensure_future(self._pump(link, upstream, link.client, up=False))
            pending: set[asyncio.Future[bool]] = {up, down}
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if not all(f.result() for f in done):
                        break  # one side failed: reset both
                else:
                    graceful = True  # both sides closed their half
            finally:
                for f in pending:
                    f.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._links.discard(link)
            for sock in (link.client, link.upstream):
                if sock is None:
                    continue
                if graceful:
                    sock.close()
                else:
                    _rst(sock)

    async def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, *, up: bool) -> bool:
        """Copy ``src`` to ``dst`` while the link's gate is open: True once ``src``
        closed its half (passed on), False when either side failed."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await link.gate.wait()
                data = await loop.sock_recv(src, CHUNK)
                await link.gate.wait()  # stalled meanwhile: held until healed
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return True
                await loop.sock_sendall(dst, data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except OSError:
            return False
