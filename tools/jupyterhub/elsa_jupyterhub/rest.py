"""One JSON call to a token-authenticated REST API (the hub's, elsa-proxy's), off the event loop."""

import asyncio
import json
import urllib.error
import urllib.request


def _call(error, name, base_url, token, method, path, body, timeout):
    req = urllib.request.Request(base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"token {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise error(f"{name} {method} {path}: HTTP {e.code}: {e.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise error(f"{name} at {base_url} unreachable ({method} {path}): {e}") from None
    return json.loads(text) if text else {}


async def call_json(error, name, base_url, token, method, path, body=None, timeout=120):
    """The decoded answer ({} when empty), None for 404; any other failure raises `error` with
    `name` (e.g. "hub API") and what failed."""
    return await asyncio.to_thread(_call, error, name, base_url, token, method, path, body, timeout)
