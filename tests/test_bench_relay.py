"""bench/delay_link.py, the slow link of bench/relay.py: it really holds data 25 ms each way,
keeps every byte in order, and delays a new connection's first reply like a real handshake."""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

LINK = Path(__file__).resolve().parent.parent / "bench" / "delay_link.py"
DELAY = 0.025


@pytest.fixture
def echo_port():
    """A TCP echo server on 127.0.0.1 (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def link_port(echo_port):
    proc = subprocess.Popen([sys.executable, str(LINK), "--to", f"127.0.0.1:{echo_port}", "--delay", str(DELAY)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield int(line.rsplit(":", 1)[1])
    proc.terminate()
    proc.wait(5)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(len(payload) - len(got))
    assert got == payload
    return time.perf_counter() - started


def test_round_trip_is_two_delays_and_set_up_four(link_port):
    with connect(link_port) as sock:
        first = round_trip(sock)  # the upstream opens 3 delays after accept, then the echo comes back
        rtts = [round_trip(sock) for _ in range(10)]
    assert first >= 4 * DELAY
    assert min(rtts) >= 2 * DELAY
    assert statistics.median(rtts) < 3 * DELAY  # no more than a little scheduling slack on top


def test_bytes_arrive_in_order_without_a_bandwidth_cap(link_port):
    data = os.urandom(4_000_000)
    received = bytearray()
    with connect(link_port) as sock:
        round_trip(sock)  # set-up done

        def read():
            while len(received) < len(data) and (chunk := sock.recv(1 << 20)):
                received.extend(chunk)
        reader = threading.Thread(target=read)
        started = time.perf_counter()
        reader.start()
        for i in range(0, len(data), 7_777):  # many writes of an odd size
            sock.sendall(data[i:i + 7_777])
        reader.join(10)
        elapsed = time.perf_counter() - started
    assert bytes(received) == data
    assert elapsed < 1.0  # 4 MB: the delay, not a rate limit


def test_a_close_reaches_the_other_side(link_port):
    with connect(link_port) as sock:
        round_trip(sock)
        sock.shutdown(socket.SHUT_WR)  # the echo server sees the end, closes; that comes back
        started = time.perf_counter()
        assert sock.recv(10) == b""
        assert time.perf_counter() - started >= 2 * DELAY
