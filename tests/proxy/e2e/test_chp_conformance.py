"""The same API calls and requests against Debian's configurable-http-proxy and elsa-proxy:
the status codes and JSON bodies must match (timestamps normalised)."""

import json
import os
import sys
import urllib.request

import pytest

from proxy_util import free_port

HERE = os.path.dirname(os.path.abspath(__file__))


def normalise(value):
    if isinstance(value, dict):
        return {k: ("<time>" if k == "last_activity" else normalise(v)) for k, v in value.items()}
    return value


# (method, path, body or raw bytes, token: "good" | None | "wrong" | "bearer")
API_CASES = [
    ("GET", "/api/routes", None, "good"),
    ("POST", "/api/routes/user/alice", {"target": "http://127.0.0.1:{backend}", "jupyterhub": True,
                                        "user": "alice", "server_name": ""}, "good"),
    ("GET", "/api/routes/user/alice", None, "good"),
    ("GET", "/api/routes/user/alice/", None, "good"),
    ("POST", "/api/routes/user/bob/", {"target": "http://127.0.0.1:{backend}/prefix", "n": 1.5}, "good"),
    ("POST", "/api/routes", {"target": "http://127.0.0.1:{backend}"}, "good"),
    ("GET", "/api/routes", None, "good"),
    ("POST", "/api/routes/user/carol", b"{not json", "good"),
    ("POST", "/api/routes/user/carol", {"no_target": 1}, "good"),
    ("POST", "/api/routes/user/carol", {"target": 5}, "good"),
    ("POST", "/api/routes/user/carol", b"null", "good"),
    ("POST", "/api/routes/user/carol", {"target": "http://x"}, None),
    ("POST", "/api/routes/user/carol", b"{bad", None),
    ("GET", "/api/routes", None, None),
    ("GET", "/api/routes", None, "wrong"),
    ("GET", "/api/routes", None, "bearer"),
    ("DELETE", "/api/routes/user/alice", None, "wrong"),
    ("GET", "/api/routes?inactive_since=2000-01-01T00:00:00.000Z", None, "good"),
    ("GET", "/api/routes?inactive_since=2999-01-01T00:00:00Z", None, "good"),
    ("GET", "/api/routes?inactive_since=not-a-date", None, "good"),
    ("PUT", "/api/routes/user/alice", {"target": "http://x"}, "good"),
    ("GET", "/api/other", None, "good"),
    ("DELETE", "/api/routes/user/nobody", None, "good"),
    ("GET", "/api/routes/user/nobody", None, "good"),
    ("DELETE", "/api/routes/user/bob", None, "good"),
    ("GET", "/api/routes", None, "good"),
]

# Requests through the proxy port: (method, path, headers).
PROXY_CASES = [
    ("GET", "/user/alice/api/status?x=1", {}),
    ("GET", "/user/alice", {"X-Forwarded-For": "10.1.2.3"}),
    ("POST", "/user/alice/api/contents", {"Content-Type": "application/json"}),
    ("GET", "/hub/login", {"Host": "hub.example.org:8443"}),
    ("GET", "/_chp_healthz", {}),
]


def call(base, method, path, body=None, headers=None):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, normalise(json.loads(text)) if text else None
    except ValueError:
        return status, "<text>"


def test_api_and_proxying_match_configurable_http_proxy(proxy_factory, procs):
    backend = free_port()
    procs.start(sys.executable if sys.executable.startswith("/usr/bin") else "/usr/bin/python3",
                os.path.join(HERE, "backends.py"), "http", str(backend), port=backend)
    chp = proxy_factory("chp", token="conformance")
    elsa = proxy_factory("elsa", token="conformance")
    tokens = {"good": "token conformance", "wrong": "token nope", "bearer": "Bearer conformance", None: None}
    differences = []
    for method, path, body, token in API_CASES:
        if isinstance(body, dict):
            body = json.loads(json.dumps(body).replace("{backend}", str(backend)))
        headers = {"Authorization": tokens[token]} if tokens[token] else {}
        got = [call(p.api_base, method, path, body, headers) for p in (chp, elsa)]
        if got[0] != got[1]:
            differences.append(f"{method} {path} token={token}: chp {got[0]} != elsa {got[1]}")

    for method, path, headers in PROXY_CASES:
        got = []
        for p in (chp, elsa):
            status, answer = call(p.base, method, path, b"{}" if method == "POST" else None, headers)
            if isinstance(answer, dict) and "headers" in answer:
                h = {k.lower(): v for k, v in answer["headers"].items()}
                # What the backend sees: path, Host and the X-Forwarded-* family.
                answer = {"path": answer["path"], "method": answer["method"],
                          **{k: (h.get(k) or "").replace(str(p.port), "<port>")
                             for k in ("host", "x-forwarded-for", "x-forwarded-proto",
                                       "x-forwarded-port", "x-forwarded-host")}}
            got.append((status, answer))
        if got[0] != got[1]:
            differences.append(f"proxy {method} {path}: chp {got[0]} != elsa {got[1]}")
    # No route at all: both 404 (bodies differ: CHP has its own HTML page).
    for p in (chp, elsa):
        call(p.api_base, "DELETE", "/api/routes/", None, {"Authorization": "token conformance"})
    statuses = [call(p.base, "GET", "/nowhere")[0] for p in (chp, elsa)]
    if statuses[0] != statuses[1]:
        differences.append(f"no route: chp {statuses[0]} != elsa {statuses[1]}")
    assert not differences, "\n".join(differences)
