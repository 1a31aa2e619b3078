"""A slow link in user space: a TCP forwarder that holds every chunk for a fixed one-way delay.

    python bench/delay_link.py --listen 127.0.0.1:0 --to 127.0.0.1:2525 --delay 0.025

prints `listening on HOST:PORT` once it accepts connections, then forwards each one to
--to until killed. Standard library only (bench/relay.py starts it as its own process, so
its CPU time is its own).

Why not the kernel: `tc qdisc add dev veth0 root netem delay 25ms` is the usual way, but
this machine's kernel (a Firecracker VM, no loadable modules) answers "Error: Specified
qdisc kind is unknown." for netem (and for fq, fq_codel and prio), so nothing in the
kernel can hold packets back for a time.

What it models, in both directions alike:
- Data: each chunk read is written to the other side `delay` seconds after it was read,
  in order; no bandwidth cap (a chunk is never held longer because others are queued).
  Writing stops reading the other side while the kernel's send buffer is full, so a slow
  reader slows its writer as TCP would.
- Set-up: the client's connect() returns at once (the forwarder accepts it locally), so
  the upstream connection is opened 3 x delay later and the server's greeting reaches the
  client 4 x delay after connect(), as it would over a real link (SYN, SYN-ACK, ACK, then
  the greeting back). Whatever the client sends before then waits, in order.
- Close: an end of stream travels like data (after `delay`, behind what was read before it).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import signal

_EOF = None  # in a queue: close the transport once what is before it is written


class Half(asyncio.Protocol):
    """One TCP connection of a forwarded pair: what it reads goes to its peer `delay` later;
    what its peer read is queued here (due time, bytes) until due."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float):
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.queue: collections.deque = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.send_later(data)

    def eof_received(self) -> bool:
        self.peer.send_later(_EOF)
        return True  # keep our writing side open for what the peer still has to say

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if self.peer is not None:
            self.peer.send_later(_EOF)

    def pause_writing(self) -> None:  # our send buffer is full: stop reading what feeds it
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def send_later(self, data: bytes | None) -> None:
        if self.closed:
            return
        self.queue.append((self.loop.time() + self.delay, data))
        if self.timer is None and self.transport is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        """Write every chunk that is due (in order); wake up again for the next one."""
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is _EOF:
                self.queue.clear()
                self.closed = True
                self.transport.close()  # after the bytes already written
                return
            self.transport.write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)


class Upstream(Half):
    pass


class Downstream(Half):
    """The accepted (client's) side: opens the upstream connection 3 x delay later."""

    def __init__(self, loop, delay: float, target: tuple[str, int]):
        super().__init__(loop, delay)
        self.target = target
        self.early: list[bytes | None] = []  # read before the upstream exists

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.loop.call_later(3 * self.delay, lambda: self.loop.create_task(self.connect()))

    async def connect(self) -> None:
        try:
            _, upstream = await self.loop.create_connection(lambda: Upstream(self.loop, self.delay), *self.target)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        if self.closed:
            upstream.transport.close()
            return
        for data in self.early:  # already waited at least as long as the set-up
            upstream.queue.append((self.loop.time(), data))
        self.early.clear()
        if upstream.queue:
            upstream.flush()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.early.append(_EOF)
            return True
        return super().eof_received()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float, ready=None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(loop, delay, target), *listen, backlog=1024,
                                      reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    if ready is not None:
        ready(host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any free one)")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay in seconds (default 0.025)")
    args = parser.parse_args()

    def ready(host, port):
        print(f"listening on {host}:{port}", flush=True)

    asyncio.run(serve(args.listen, args.to, args.delay, ready))


if __name__ == "__main__":
    main()
