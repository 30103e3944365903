"""The service's own calls to the hub's REST API (with the token the hub gives a managed service)."""

import os
import urllib.parse

from .rest import call_json


class HubError(RuntimeError):
    pass


class HubClient:
    def __init__(self, api_url=None, token=None):
        self.api_url = (api_url or os.environ.get("JUPYTERHUB_API_URL", "")).rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not self.api_url or not self.token:
            raise HubError("JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN are not set: run elsa-hub-service as a "
                           "JupyterHub service (c.JupyterHub.services), which sets them")

    async def call(self, method, path, body=None):
        return await call_json(HubError, "hub API", self.api_url, self.token, method, path, body, timeout=30)

    async def user(self, name):
        return await self.call("GET", "/users/" + urllib.parse.quote(name, safe=""))

    async def server_state(self, user, server=""):
        """The spawner state of a user's server as the hub records it (needs admin:server_state)."""
        model = await self.user(user)
        srv = (model or {}).get("servers", {}).get(server or "")
        return (srv or {}).get("state")

    async def users(self):
        return await self.call("GET", "/users?state=active") or []

    async def stop_server(self, user, server=""):
        path = "/users/" + urllib.parse.quote(user, safe="") + "/server"
        if server:
            path += "s/" + urllib.parse.quote(server, safe="")
        return await self.call("DELETE", path)
