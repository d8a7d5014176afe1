"""``AsyncClient``: the calls of ``Client`` for asyncio code (``await client.run(...)``).

One DEALER socket per client, made on first use in the running event loop, whose
descriptor the loop watches: each wake-up hands every reply waiting to the future waiting
for it, so any number of requests can be awaited at once. Requests are built and checked
by ``ClientCore``, replies become values or typed errors in ``settle``, and the socket is
secured by ``ClientCurve``: all as in ``Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any, cast

import zmq

from dlhub_hpc.client import (
    _SLICE,
    USE_CLIENT_DEFAULT,
    ClientCore,
    UseClientDefault,
    client_closed,
    no_reply,
    raise_load_failure,
    settle,
    workers_missing,
    workers_ready,
)
from dlhub_hpc.client_publication import AdminCalls, PublicationCalls
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.protocol import Reply, encode
from dlhub_hpc.protocol.bundle import HubBundles, bundled
from dlhub_hpc.references import ResultTo
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.transfer import call as streamed
from dlhub_hpc.transfer.pending import PendingTransfers
from dlhub_hpc.transfer.window import Outgoing

logger = logging.getLogger(__name__)

_BURST = 256  # replies taken in one callback at most, before the loop runs others
_ASK_WAIT = 60.0  # past control's own timeout: a loop that stopped answering


class AsyncClient(ClientCore, AdminCalls[Awaitable[Any]], PublicationCalls[Awaitable[Any]]):
    """Talks to one hub from one event loop; ``async with`` it or ``await close()``.

    ``run``, ``run_batch``, ``control``, ``publish``, ``wait_for_workers`` and every call
    of ``AdminCalls`` / ``PublicationCalls`` are awaited; ``submit`` returns an
    ``asyncio.Future`` at once, with the request already on its way.
    """

    def __init__(
        self, address: str | None = None, *, timeout: float | None = 60.0,
        keys: KeyPair | None = None, server_key: str | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        """As ``Client``. A hub in this process is reached on its ``tcp://`` address
        (``hub.client_address``), not ``inproc://``."""
        if address is not None and address.startswith("inproc://"):
            raise ConfigError(
                f"AsyncClient cannot reach {address}: an in-process address needs the hub's "
                "own ZeroMQ context, which asyncio sockets cannot share safely. Use "
                "AsyncClient(hub.client_address), or hub.client() for a Client",
                address=address)
        super().__init__(address, timeout=timeout, keys=keys, server_key=server_key,
                         max_message_bytes=max_message_bytes)
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # the handshake's failures
        self._drain_soon = False  # a _drain is scheduled on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = {}
        self._closed = False
        self._transfers: PendingTransfers | None = None  # large arrays in chunks, made with _sock
        self._stall_timer: asyncio.TimerHandle | None = None
        self._outgoing: list[tuple[str, list[Any]]] = []  # sent at the loop's next turn
        self._hub = HubBundles()  # bundles go once a reply showed the hub reads them

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- serving --

    def submit(
        self, servable: str, inputs: Any, *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        parameters: dict[str, Any] | None = None, result_to: ResultTo = None,
    ) -> asyncio.Future[Any]:
        """Send one request; await the future for the output (or its typed error). It
        leaves at the event loop's next turn, with the others sent in this one (small ones
        as one bundle, to a hub that reads them). The arguments are ``Client.submit``'s.

        Must be called with the client's event loop running. Bad inputs raise here. A
        large array goes as a sealed memfd where the same-node link is open (``run`` opens
        it on first need; ``open_local_path`` opens it now), else in chunks.
        """
        upload = None
        if not self._fast.takes(inputs):
            inputs, upload = streamed.stream_input(inputs)  # a large array goes in chunks
        return self._send(*self._request(servable, inputs, method, timeout,
                                         cache and upload is None, parameters, result_to),
                          upload)

    async def run(
        self, servable: str, inputs: Any, *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        parameters: dict[str, Any] | None = None, result_to: ResultTo = None,
    ) -> Any:
        """Run ``servable`` on ``inputs`` and return its output (raises ``DlhubHpcError``)."""
        await self.path_for(inputs)
        return await self.submit(servable, inputs, method=method, timeout=timeout, cache=cache,
                                 parameters=parameters, result_to=result_to)

    async def run_batch(
        self, servable: str, inputs: list[Any], *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        return_exceptions: bool = False, parameters: dict[str, Any] | None = None,
    ) -> list[Any]:
        """As ``Client.run_batch``: outputs in order; the first failed item (in order)
        raises, or with ``return_exceptions=True`` stands in the list."""
        for x in inputs:
            await self.path_for(x)
        futures = [self.submit(servable, x, method=method, timeout=timeout, cache=cache,
                               parameters=parameters)
                   for x in inputs]
        results = await asyncio.gather(*futures, return_exceptions=True)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return list(results)

    # -- the same-node fast path --

    async def open_local_path(self) -> bool:
        """As ``Client.open_local_path``: open the same-node link now, so that large
        outputs of calls with small inputs come by it too; False where it does not apply."""
        self._socket()
        loop = asyncio.get_running_loop()

        def ask(**args: Any) -> Any:  # from the opening thread, through this loop's socket
            return asyncio.run_coroutine_threadsafe(self.control("local_path", **args),
                                                    loop).result(_ASK_WAIT)

        self._fast.on_linked = partial(ask, linked=self._prefix)
        # Opening takes two hub calls and a connect: in a thread, so the loop serves on.
        return await asyncio.to_thread(self._fast.open, self.address, ask)

    async def path_for(self, inputs: Any) -> None:
        """Open the same-node link if ``inputs`` are the first large enough to want it."""
        if self._fast.needs_opening(inputs):
            await self.open_local_path()

    # -- administration --

    async def control(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run a hub operation; ``HubUnavailable`` if no answer comes within ``timeout``."""
        return await self._send(*self._control(op, args), timeout)

    async def publish(self, directory: str | Path) -> dict[str, Any]:
        """Publish a servable directory; returns its name, version and digest."""
        bundle = await asyncio.to_thread(self._bundle, directory)  # reads and hashes files
        result: dict[str, Any] = await self.control("publish", bundle=bundle)
        return result

    async def wait_for_workers(self, servable: str, count: int = 1,
                               timeout: float = 60.0) -> None:
        """Return once ``count`` workers of ``servable`` are loaded and serving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.status()
            ready = workers_ready(status, servable)
            if ready >= count:
                return
            raise_load_failure(status, servable)  # at once, with the worker's own error
            if loop.time() > deadline:
                raise workers_missing(servable, ready, count, timeout)
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Close the socket and stop the client's tasks; requests still open fail."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(client_closed())
        self._shut()
        # Off the loop: a link being opened holds the path's lock while it asks the hub
        # through this loop (its ask fails now that the socket is shut).
        await asyncio.to_thread(self._fast.close)

    # -- plumbing --

    def _socket(self) -> zmq.Socket[bytes]:
        if self._closed:
            raise client_closed()
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._open(loop)
        elif loop is not self._loop:
            raise ConfigError("an AsyncClient serves the event loop it was first used in; "
                              "make one AsyncClient per event loop")
        assert self._sock is not None
        return self._sock

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        # A plain socket watched by the loop's own reader: no future per send or receive,
        # and every reply waiting is taken in one callback (the process's I/O thread).
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        self._monitor = self._curve.secure(sock, self.address)
        sock.connect(self.address)
        self._sock, self._loop = sock, loop
        self._transfers = PendingTransfers(lambda msg: self._put(sock, encode(msg)))
        loop.add_reader(sock.fileno(), self._drain)
        if self._monitor is not None:
            self._tasks = [loop.create_task(self._watch(self._monitor),
                                            name="dlhub-async-client-handshake")]

    def _send(self, request_id: str, frames: list[Any], wait: float | None,
              upload: Outgoing | None = None) -> asyncio.Future[Any]:
        self._socket()  # opens it on first use; raises once closed
        if upload is not None and self._transfers is not None:
            self._transfers.upload(request_id, upload)
            self._watch_stalls()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        timer = None if wait is None else loop.call_later(wait, self._expire, request_id)
        self._pending[request_id] = (future, timer)
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append((request_id, frames))
        return future

    def _flush(self) -> None:
        """Send what this turn of the loop asked for: small requests together, as bundles."""
        outgoing, self._outgoing = self._outgoing, []
        sock = self._sock
        if sock is None:  # closed meanwhile: close() failed their futures
            return
        ids = iter(outgoing)
        for frames, count in bundled((f for _, f in outgoing), self._hub.ok):
            sent = [next(ids)[0] for _ in range(count)]
            try:
                self._put(sock, frames)
            except zmq.ZMQError as exc:
                for request_id in sent:
                    self._finish(request_id, error=DlhubHpcError(
                        f"could not send to the hub at {self.address}: {exc}",
                        address=self.address))

    def _put(self, sock: zmq.Socket[bytes], frames: list[Any]) -> None:
        """Send without blocking (no high-water mark: it queues). A send may take the
        socket's pending wake-up, so replies already waiting are looked for right after."""
        if len(frames) == 1:
            sock.send(frames[0], zmq.NOBLOCK)
        else:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        if not self._drain_soon and _readable(sock):
            self._drain_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Take the replies waiting (at most a burst: the loop's other callbacks wait)."""
        self._drain_soon = False
        sock = self._sock
        if sock is None:
            return
        try:
            for _ in range(_BURST):
                if not _readable(sock):
                    return
                self._take(sock.recv_multipart(zmq.NOBLOCK, copy=False))
        except zmq.ZMQError as exc:  # the socket broke: nothing more will arrive on it
            self._fail_all(DlhubHpcError(f"the connection to the hub at {self.address} "
                                         f"broke: {exc}", address=self.address))
            self._shut()
            return
        if not self._drain_soon:  # more may wait, and the descriptor will not say so again
            self._drain_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _take(self, frames: list[Any]) -> None:
        assert self._transfers is not None
        for message in self._hub.read(frames):
            # a transfer's chunk or credit moves it; a same-node array is mapped
            reply = self._transfers.take(message, self._fast.fetch)
            if reply is not None:
                self._finish(reply.request_id, reply=reply)

    def _watch_stalls(self) -> None:
        """While transfers are open, look each second for one that stalled."""
        transfers, loop = self._transfers, self._loop
        if (transfers is None or loop is None or self._stall_timer is not None
                or not transfers.active):
            return

        def look() -> None:
            self._stall_timer = None
            transfers.expire()
            if transfers.active and not self._closed:
                self._stall_timer = loop.call_later(1.0, look)

        self._stall_timer = loop.call_later(1.0, look)

    async def _watch(self, monitor: zmq.Socket[bytes]) -> None:
        """Fail every open request at once when the hub refuses the handshake."""
        while True:
            await asyncio.sleep(_SLICE)
            refused = self._curve.refusal(monitor, self.address)
            if refused is not None:
                self._fail_all(refused)

    def _finish(self, request_id: str, *, reply: Any = None,
                error: BaseException | None = None) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None or entry[0].done():  # answered already, not ours, or cancelled
            if reply is not None and self._transfers is not None:
                self._transfers.settle(reply, None)  # an output coming is given up
            if entry is not None and entry[1] is not None:
                entry[1].cancel()
            return
        future, timer = entry
        if timer is not None:
            timer.cancel()
        if error is not None:
            future.set_exception(error)
        elif self._transfers is not None:
            self._transfers.settle(reply, partial(_settle_unless_done, future))
            self._watch_stalls()
        else:
            settle(future, reply)

    def _expire(self, request_id: str) -> None:
        self._finish(request_id, error=no_reply(self.address, self._curve))

    def _fail_all(self, error: DlhubHpcError) -> None:
        if self._transfers is not None:
            self._transfers.fail_all(error)
        for request_id in list(self._pending):
            self._finish(request_id, error=error)

    def _shut(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            ClientCurve.close(sock, self._monitor)
            sock.close(linger=0)
        self._monitor = None


def _settle_unless_done(future: asyncio.Future[Any], reply: Reply) -> None:
    if not future.done():  # its caller may have cancelled it while its output came
        settle(future, reply)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
