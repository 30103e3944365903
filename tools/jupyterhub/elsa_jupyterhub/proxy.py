"""elsa-proxy's APIs (docs/proxy.md): CHP's routes and the migration API (pause, retarget, resume)."""

import asyncio
import json
import os
import urllib.error
import urllib.request


class ProxyError(RuntimeError):
    pass


class ProxyClient:
    def __init__(self, api_url, token=None):
        self.api_url = api_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("CONFIGPROXY_AUTH_TOKEN", "")

    def _request(self, method, path, body=None, timeout=120):
        req = urllib.request.Request(self.api_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", f"token {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise ProxyError(f"elsa-proxy {method} {path}: HTTP {e.code} {e.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ProxyError(f"elsa-proxy at {self.api_url} unreachable ({method} {path}): {e}") from None
        return json.loads(text) if text else {}

    async def call(self, method, path, body=None, timeout=120):
        return await asyncio.to_thread(self._request, method, path, body, timeout)

    async def route(self, path):
        return await self.call("GET", "/api/routes" + path)

    async def migration_state(self, path):
        return await self.call("GET", "/api/migration/state" + path)

    async def pause(self, path):
        """Holds the browsers' websockets of the route open and closes the backend side cleanly
        (a connection from outside cannot move with the session)."""
        return await self.call("POST", "/api/migration/pause" + path, {})

    async def resume(self, path, target=None):
        """Resumes to `target` (None: where it was), reconnecting and replaying held messages."""
        return await self.call("POST", "/api/migration/resume" + path, {"target": target} if target else {})
