"""elsa-proxy's APIs (docs/proxy.md): CHP's routes and the migration API (pause, retarget, resume)."""

import os

from .rest import call_json


class ProxyError(RuntimeError):
    pass


class ProxyClient:
    def __init__(self, api_url, token=None):
        self.api_url = api_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("CONFIGPROXY_AUTH_TOKEN", "")

    async def call(self, method, path, body=None, timeout=120):
        return await call_json(ProxyError, "elsa-proxy", self.api_url, self.token, method, path, body, timeout)

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
