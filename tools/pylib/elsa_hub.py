"""A browser's view of a JupyterHub with Elsa, for tools/hub-demo and the hub tests: log in, spawn
from the form, open the notebook UI and a kernel websocket through the proxy, with the hub's
cookies (the single-user server's OAuth done on the way). Debian's python3-requests and
python3-websocket."""

import time
import uuid

import requests
import websocket

from elsa_jupyter import KernelConnection  # same folder


class HubError(RuntimeError):
    pass


def login(base, user, password="pw"):
    """A requests.Session logged in to the hub at `base` (the proxy's public URL)."""
    s = requests.Session()
    s.get(base + "/hub/login", timeout=30)
    r = s.post(base + "/hub/login", data={"username": user, "password": password,
                                          "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=30)
    if r.status_code != 302:
        raise HubError(f"login of {user} failed: {r.status_code} {r.text[:300]}")
    return s


def api(base, method, path, token, check=True, json_body=None, timeout=300, **kw):
    """A hub or service API call with an API token (path from the proxy's root)."""
    r = requests.request(method, base + path, headers={"Authorization": f"token {token}"}, json=json_body,
                         timeout=timeout, **kw)
    if check and r.status_code >= 400:
        raise HubError(f"{method} {path}: {r.status_code} {r.text[:500]}")
    return r


def spawn_from_form(base, browser, user, fields=None):
    """What a browser does at /hub/spawn: the options form, then its POST (empty fields: the
    newest checkpoint, any host). Returns the form's HTML."""
    form = browser.get(base + "/hub/spawn", timeout=60)
    if form.status_code != 200:
        raise HubError(f"/hub/spawn answered {form.status_code}: {form.text[:300]}")
    data = {"checkpoint": "", "host": ""}
    data.update(fields or {})
    r = browser.post(base + f"/hub/spawn/{user}", data=data, allow_redirects=False, timeout=120)
    if r.status_code not in (200, 302):
        raise HubError(f"POST /hub/spawn/{user} answered {r.status_code}: {r.text[:500]}")
    return form.text


def wait_ready(base, token, user, timeout=120):
    """The user's default server model once the hub says it is ready."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        model = api(base, "GET", f"/hub/api/users/{user}", token).json()
        srv = model["servers"].get("")
        if srv and srv["ready"]:
            return srv
        # Neither ready nor pending: it failed (a few seconds' grace for the spawn to show up).
        if (srv is None or not srv.get("pending")) and time.monotonic() > start + 5:
            raise HubError(f"{user}'s server failed to start: {model}")
        time.sleep(0.3)
    raise HubError(f"{user}'s server not ready after {timeout} s")


class BrowserKernel(KernelConnection):
    """A kernel websocket opened the way a browser does: through the proxy, with the hub's
    cookies (the single-user server's OAuth done first)."""

    def __init__(self, base, cookies, user, kernel_id, session_id):
        self.kernel_id, self.session_id = kernel_id, session_id
        cookie = "; ".join(f"{c.name}={c.value}" for c in cookies)
        self.ws = websocket.create_connection(
            base.replace("http", "ws") + f"/user/{user}/api/kernels/{kernel_id}/channels?session_id={session_id}",
            header=[f"Cookie: {cookie}"], timeout=60)


def open_kernel(base, browser, user, kernel_id=None, timeout=90):
    """Authenticates `browser` with the user's server (OAuth through the hub), starts a kernel
    unless one is given, and opens its websocket."""
    deadline = time.monotonic() + timeout
    while True:
        # An authenticated page (not /api, which answers 403) runs the OAuth dance with the hub.
        browser.get(base + f"/user/{user}/files/probe", timeout=30)
        r = browser.get(base + f"/user/{user}/api/status", timeout=30)
        if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
            break
        if time.monotonic() > deadline:
            raise HubError(f"{user}'s server never answered through the proxy: {r.status_code}")
        time.sleep(0.5)
    if kernel_id is None:
        xsrf = browser.cookies.get("_xsrf", path=f"/user/{user}/") or browser.cookies.get("_xsrf", "")
        r = browser.post(base + f"/user/{user}/api/kernels", json={"name": "python3"},
                         headers={"X-XSRFToken": xsrf, "Referer": base + f"/user/{user}/"}, timeout=60)
        if r.status_code != 201:
            raise HubError(f"starting a kernel: {r.status_code} {r.text[:300]}")
        kernel_id = r.json()["id"]
    return BrowserKernel(base, browser.cookies, user, kernel_id, uuid.uuid4().hex)


def notebook_tree(base, browser, user, timeout=60):
    """GET /user/NAME/tree as a browser (following the OAuth redirects); returns the page's HTML
    once it is the classic notebook's file browser, raises with what came instead."""
    deadline = time.monotonic() + timeout
    while True:
        r = browser.get(base + f"/user/{user}/tree", timeout=30)
        problem = tree_page_problem(r, user)
        if problem is None:
            return r.text
        if time.monotonic() > deadline:
            raise HubError(f"/user/{user}/tree is not the notebook UI: {problem}")
        time.sleep(0.5)


def tree_page_problem(response, user):
    """None if `response` is the classic notebook's tree page of `user`'s server, else why not."""
    html = response.text
    if response.status_code != 200:
        return f"HTTP {response.status_code} at {response.url}: {html[:200]!r}"
    if not response.url.split("?")[0].endswith(f"/user/{user}/tree"):
        return f"ended at {response.url}"
    missing = [m for m in ('id="notebook_list"', 'id="tabs"', f'data-base-url="/user/{user}/"') if m not in html]
    if missing:
        return f"the page lacks {missing}: {html[:300]!r}"
    return None
