"""elsa-proxy's Prometheus endpoint (--metrics-port): the real binary, real backends on 127.0.0.1,
HTTP requests and a websocket through it, a pause and a resume of the websocket's route through
the migration API; then /metrics must say exactly what happened. The metrics port serves
nothing else: not the routes, not the API, and hostile requests get 4xx without harm."""

import asyncio
import math
import os
import re
import time
import urllib.error
import urllib.request

import pytest
import websockets

from proxy_util import free_port, raw_request, status_of, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def family_of(sample_name, types):
    base = re.sub(r"_(bucket|sum|count)$", "", sample_name)
    return base if types.get(base) == "histogram" else sample_name


def parse_exposition(text):
    """{(name, frozenset(labels)): value} from the text format 0.0.4, checked as a scraper would:
    every sample `name{labels} value`, HELP and TYPE before a family's samples, histograms'
    buckets cumulative with +Inf equal to _count."""
    assert text.endswith("\n")
    samples, types, seen_samples = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ")[2]
            assert name not in seen_samples, f"{line!r} after {name}'s samples"
            if line.startswith("# TYPE "):
                types[name] = line.split(" ")[3]
                assert types[name] in ("counter", "gauge", "histogram"), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.groups()
        family = family_of(name, types)
        assert family in types, f"{name}: no TYPE before it"
        seen_samples.add(family)
        labels = {}
        if labels_text:
            consumed = 0
            for lm in LABEL.finditer(labels_text):
                assert lm.start() == consumed, f"bad labels in {line!r}"
                labels[lm.group(1)] = lm.group(2)
                consumed = lm.end()
            assert consumed == len(labels_text), f"bad labels in {line!r}"
        samples[(name, frozenset(labels.items()))] = float(value)
    for family, kind in types.items():
        if kind != "histogram":
            continue
        buckets = sorted(((float(dict(k)["le"]), v) for (n, k), v in samples.items() if n == family + "_bucket"))
        assert buckets and math.isinf(buckets[-1][0]), family
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{family}: buckets not cumulative"
        assert buckets[-1][1] == samples[(family + "_count", frozenset())], family
    return samples


def scrape(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse_exposition(r.read().decode())


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def setup(proxy_factory, procs):
    http_port, ws_port, metrics_port = free_port(), free_port(), free_port()
    py = "/usr/bin/python3"
    procs.start(py, os.path.join(HERE, "backends.py"), "http", str(http_port), port=http_port)
    procs.start(py, os.path.join(HERE, "backends.py"), "ws", str(ws_port), port=ws_port)
    proxy = proxy_factory("elsa", token="metrics", extra=["--metrics-ip", "127.0.0.1",
                                                          "--metrics-port", str(metrics_port),
                                                          "--header-timeout", "2000"])
    wait_port(metrics_port, proxy.proc, what="elsa-proxy's metrics listener")
    return proxy, metrics_port, http_port, ws_port


def test_metrics_count_what_the_proxy_did(setup):
    proxy, metrics_port, http_port, ws_port = setup
    started = time.time()
    before = scrape(metrics_port)
    assert value(before, "elsa_proxy_routes") == 0
    assert started - 60 < value(before, "process_start_time_seconds") <= started
    assert f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in proxy.log()

    nothing_listens = free_port()
    proxy.add_route("/http", f"http://127.0.0.1:{http_port}")
    proxy.add_route("/ws", f"http://127.0.0.1:{ws_port}")
    proxy.add_route("/dead", f"http://127.0.0.1:{nothing_listens}")
    for i in range(5):
        assert get(f"{proxy.base}/http/x{i}") == 200
    assert get(f"{proxy.base}/nowhere") == 404
    assert get(f"{proxy.base}/nowhere/else") == 404
    assert get(f"{proxy.base}/dead/x") == 503

    async def websocket_across_a_pause():
        async with websockets.connect(f"ws://127.0.0.1:{proxy.port}/ws/echo", ping_interval=None) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 10) == "before"
            during = await asyncio.to_thread(scrape, metrics_port)
            assert value(during, "elsa_proxy_websockets_open") == 1
            assert value(during, "elsa_proxy_client_connections") >= 1
            status, paused = await asyncio.to_thread(proxy.api, "POST", "/api/migration/pause/ws", {"quiet_ms": 50})
            assert status == 200 and paused["state"] == "paused" and paused["websockets"] == 1, paused
            while_paused = await asyncio.to_thread(scrape, metrics_port)
            assert value(while_paused, "elsa_proxy_routes_paused") == 1
            for i in range(3):  # held by elsa-proxy: the backend websocket is closed
                await ws.send(f"held {i}")
            await asyncio.sleep(0.4)
            status, resumed = await asyncio.to_thread(proxy.api, "POST", "/api/migration/resume/ws", {})
            assert status == 200 and resumed["reconnected"] == 1 and resumed["failed"] == 0, resumed
            for i in range(3):  # replayed to the new backend connection, echoed back
                assert await asyncio.wait_for(ws.recv(), 10) == f"held {i}"
            return await asyncio.to_thread(scrape, metrics_port)

    after = asyncio.run(websocket_across_a_pause())
    assert value(after, "elsa_proxy_routes") == 3
    assert value(after, "elsa_proxy_routes_paused") == 0
    assert value(after, "elsa_proxy_http_requests_total", code="2xx") == 5
    assert value(after, "elsa_proxy_http_requests_total", code="4xx") == 2
    assert value(after, "elsa_proxy_http_requests_total", code="5xx") == 1
    assert value(after, "elsa_proxy_http_requests_total", code="1xx") == 1  # the websocket's 101
    assert value(after, "elsa_proxy_http_requests_total", code="3xx") == 0
    assert value(after, "elsa_proxy_errors_total", reason="no_route") == 2
    assert value(after, "elsa_proxy_errors_total", reason="backend_unreachable") == 1
    assert value(after, "elsa_proxy_errors_total", reason="websocket_resume_failed") == 0
    assert value(after, "elsa_proxy_websockets_held_total") == 1
    assert value(after, "elsa_proxy_websocket_messages_buffered_total") == 3
    assert value(after, "elsa_proxy_route_pause_seconds_count") == 1
    assert 0.4 <= value(after, "elsa_proxy_route_pause_seconds_sum") < 10
    assert value(after, "elsa_proxy_route_pause_seconds_bucket", le="0.25") == 0
    assert value(after, "elsa_proxy_route_pause_seconds_bucket", le="10") == 1
    # Gone with the websocket (the tunnel ends on its own worker, shortly after the close).
    wait_for(lambda: value(scrape(metrics_port), "elsa_proxy_websockets_open") == 0, "websockets_open 0")
    wait_for(lambda: value(scrape(metrics_port), "elsa_proxy_client_connections") == 0, "client_connections 0")


def test_metrics_port_serves_only_metrics(setup):
    proxy, metrics_port, http_port, _ = setup
    proxy.add_route("/http", f"http://127.0.0.1:{http_port}")
    base = f"http://127.0.0.1:{metrics_port}"
    # Neither the routes nor the API, token or not.
    assert get(f"{base}/http/x") == 404
    assert get(f"{base}/") == 404
    req = urllib.request.Request(f"{base}/api/routes", headers={"Authorization": "token metrics"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("the metrics port answered the API")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    answer = raw_request(metrics_port, b"POST /api/routes/evil HTTP/1.1\r\nHost: a\r\nAuthorization: token metrics\r\n"
                                       b"Content-Length: 37\r\nConnection: close\r\n\r\n"
                                       b'{"target": "http://127.0.0.1:1/evil"}')
    assert status_of(answer) == 404
    assert "/evil" not in proxy.api("GET", "/api/routes")[1]
    # Other methods on /metrics: 405 with Allow.
    answer = raw_request(metrics_port, b"DELETE /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 405 and b"\r\nAllow: GET\r\n" in answer
    # Hostile HTTP: garbage, oversized headers, a body where none belongs, a websocket upgrade.
    assert status_of(raw_request(metrics_port, b"\x16\x03\x01garbage\r\n\r\n")) == 400
    big = b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 64000 + b"\r\n\r\n"
    assert status_of(raw_request(metrics_port, big)) == 431
    huge_body = b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100000
    assert status_of(raw_request(metrics_port, huge_body)) == 413
    upgrade = (b"GET /metrics HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert status_of(raw_request(metrics_port, upgrade)) == 200
    assert status_of(raw_request(metrics_port, b"GET /metrics?x=%ZZ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) \
        in (200, 404)
    # Keep-alive: two scrapes on one connection.
    answer = raw_request(metrics_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
                                       b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    # None of this was proxied traffic, and elsa-proxy is still there.
    samples = scrape(metrics_port)
    assert sum(v for (n, _), v in samples.items() if n == "elsa_proxy_http_requests_total") == 0
    assert proxy.proc.poll() is None, "elsa-proxy died"
    assert get(f"{proxy.base}/http/x") == 200
