"""Hostile clients against elsa-proxy: each gets the right status or close code, the proxy
stays up, descriptors do not leak, and another user's websocket keeps working throughout."""

import asyncio
import os
import socket
import struct
import sys
import time
import urllib.request

import pytest
import websockets

from proxy_util import free_port, raw_request, status_of

HERE = os.path.dirname(os.path.abspath(__file__))


def fds(proc):
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


def upgrade(port, path="/ws/x"):
    """An open raw websocket through the proxy (handshake done); returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, head.split(b"\r\n\r\n", 1)[1]


def close_code_after(sock, frame, already=b""):
    """Sends a raw frame; returns the close code the proxy answers with (None if it just closed)."""
    sock.sendall(frame)
    data = already
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        while len(data) >= 2:
            op, n = data[0] & 0x0F, data[1] & 0x7F
            header = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if n == 126 and len(data) >= 4:
                n = struct.unpack(">H", data[2:4])[0]
            elif n == 127 and len(data) >= 10:
                n = struct.unpack(">Q", data[2:10])[0]
            if len(data) < header + n:
                break
            payload = data[header:header + n]
            data = data[header + n:]
            if op == 0x8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        try:
            b = sock.recv(65536)
        except OSError:
            return None
        if not b:
            return None
        data += b
    raise AssertionError("no close from the proxy")


def masked(op, payload, rsv=0):
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | rsv | op, 0x80 | len(payload)]) + mask + body


@pytest.fixture
def setup(proxy_factory, procs):
    http_port, ws_port = free_port(), free_port()
    py = "/usr/bin/python3"
    procs.start(py, os.path.join(HERE, "backends.py"), "http", str(http_port), port=http_port)
    procs.start(py, os.path.join(HERE, "backends.py"), "ws", str(ws_port), port=ws_port)
    proxy = proxy_factory("elsa", token="hostile", extra=["--header-timeout", "2000",
                                                          "--max-ws-message", "1048576"])
    proxy.add_route("/http", f"http://127.0.0.1:{http_port}")
    proxy.add_route("/ws", f"http://127.0.0.1:{ws_port}")
    return proxy


def test_hostile_clients_get_errors_and_others_are_unaffected(setup):
    proxy = setup
    port = proxy.port

    async def bystander(stop, counts):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/bystander") as ws:
            while not stop.is_set():
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 10) == "still here"
                counts.append(1)
                await asyncio.sleep(0.02)

    def attacks():
        fds_before = fds(proxy.proc)
        # Oversized headers: 431, as Node answers.
        big = b"GET /http/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 64000 + b"\r\n\r\n"
        assert status_of(raw_request(port, big)) == 431
        # Garbage instead of HTTP: 400.
        assert status_of(raw_request(port, b"\x16\x03\x01garbage\r\n\r\n")) == 400
        assert status_of(raw_request(port, b"GET /http/x HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")) == 400
        # Slowloris: a header trickling in is cut off after --header-timeout (2 s here).
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET /http/x HTTP/1.1\r\n")
            answer = b""
            for _ in range(20):
                try:
                    s.sendall(b"X-A: b\r\n")
                except OSError:
                    break
                time.sleep(0.25)
            s.settimeout(10)
            try:
                while chunk := s.recv(4096):
                    answer += chunk
            except OSError:
                pass
        assert status_of(answer) in (None, 408) and time.monotonic() - started < 15
        # Path traversal: refused by the proxy and by the API.
        assert status_of(raw_request(port, b"GET /http/../etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 400
        assert status_of(raw_request(port, b"GET /http/%2e%2e/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 400
        assert proxy.api("POST", "/api/routes/a/../b", {"target": "http://127.0.0.1:1"})[0] == 400
        assert status_of(raw_request(port, b"GET /http/%ZZ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 400
        # Tokens: missing, wrong, other scheme.
        assert proxy.api("GET", "/api/routes", token=None)[0] == 403
        assert proxy.api("GET", "/api/routes", token="nope")[0] == 403
        assert proxy.api("POST", "/api/migration/pause/ws", {}, token=None)[0] == 403
        assert proxy.api("GET", "/api/routes", headers={"Authorization": "Bearer hostile"}, token=None)[0] == 403
        # A body bigger than the API takes: 413.
        assert proxy.api("POST", "/api/routes/x", raw_body=b"{" + b" " * (2 << 20) + b"}")[0] == 413
        # Websocket handshakes without a key or with a wrong version: 400.
        bad = f"GET /ws/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
        assert status_of(raw_request(port, bad.encode())) == 400
        # Malformed frames: each closes that websocket with the right code.
        cases = [
            (bytes([0x81, 0x03]) + b"abc", 1002),                          # unmasked from a client
            (masked(0x1, b"x", rsv=0x40), 1002),                           # RSV1 without an extension
            (masked(0x3, b"x"), 1002),                                     # unknown opcode
            (masked(0x1, b"\xff\xfe"), 1007),                              # text that is not UTF-8
            (bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + b"\0\0\0\0", 1009),  # huge length
            (bytes([0x82, 0xFF]) + struct.pack(">Q", 2 << 20) + b"\0\0\0\0", 1009),  # > --max-ws-message
            (bytes([0x89, 0xFE, 0x00, 0x80]) + b"\0" * 132, 1002),        # control frame > 125
            (masked(0x0, b"x"), 1002),                                     # continuation of nothing
        ]
        for frame, code in cases:
            sock, rest = upgrade(port)
            with sock:
                assert close_code_after(sock, frame, rest) == code, frame[:12]
        # Many connections opened and dropped mid-request leave no descriptors behind.
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /http/x HTTP/1.1\r\nHost: a\r\n")
        for _ in range(50):
            sock, _ = upgrade(port)
            sock.close()
        deadline = time.monotonic() + 10
        while fds(proxy.proc) > fds_before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fds(proxy.proc) <= fds_before + 2, f"descriptors: {fds_before} -> {fds(proxy.proc)}"

    async def scenario():
        stop, counts = asyncio.Event(), []
        task = asyncio.create_task(bystander(stop, counts))
        try:
            await asyncio.to_thread(attacks)
            before = len(counts)
            await asyncio.sleep(0.5)
            assert len(counts) > before, "the bystander's websocket stalled"
        finally:
            stop.set()
            await task
        assert counts

    asyncio.run(scenario())
    assert proxy.proc.poll() is None, "elsa-proxy died"
    with urllib.request.urlopen(proxy.base + "/_chp_healthz", timeout=5) as r:
        assert r.status == 200
