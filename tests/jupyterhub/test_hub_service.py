"""elsa-hub-service: draining a host with three users' servers, and who may do what."""

import requests

from hubstack import open_kernel

DRAINED = ["carol", "dave", "erin"]


def test_drain_moves_every_session_off_a_host_within_the_deadline(stack):
    kernels = {}
    for user in DRAINED:
        stack.start_server(user, {"host": "h1"})
        k = open_kernel(stack, stack.login(user), user)
        k.execute(f"who = {user!r}")
        kernels[user] = k
    assert all(stack.where(f"jh-{u}") == "h1" for u in DRAINED)

    r = stack.api("POST", "/services/elsa/api/hosts/h1/drain?wait=1", user="admin", json_body={"deadline_s": 120})
    job = r.json()
    assert job["state"] == "done", job
    report = job["result"]
    mine = [s for s in report["sessions"] if s["user"] in DRAINED]
    assert len(mine) == 3 and all(s["ok"] and s["within_deadline"] and s["to"] == "h2" for s in mine), report
    assert report["seconds"] < 120
    # All three on h2, and each still answers on the websocket it had, through the proxy.
    for user in DRAINED:
        assert stack.where(f"jh-{user}") == "h2"
        assert kernels[user].eval("who") == repr(user)
        kernels[user].close()
    assert not [s for s in stack.agents["h1"].sessions().values() if s["state"] == "running"], "h1 is empty"


def test_users_act_only_on_their_own_sessions(stack):
    if stack.hub_server("bob") is None:
        stack.start_server("bob", {"host": "h2"})
    # A checkpoint of alice's to try to delete.
    stack.start_server("frank", {"host": "h2"})
    stack.api("DELETE", "/hub/api/users/frank/server", user="admin")
    franks = stack.api("GET", "/services/elsa/api/users/frank/sessions", user="frank").json()
    assert franks["checkpoints"], "frank has a checkpoint"
    franks_cp = franks["checkpoints"][0]["id"]

    # Bob sees his own session and nobody else's.
    own = stack.api("GET", "/services/elsa/api/users/bob/sessions", user="bob").json()
    assert [s["user"] for s in own["sessions"]] == ["bob"]
    overview = stack.api("GET", "/services/elsa/api/overview", user="bob").json()
    assert {s["user"] for s in overview["sessions"]} == {"bob"} and "rightsizing" not in overview
    assert {c["user"] for c in overview["checkpoints"]} <= {"bob"}

    # ... and cannot list, migrate or delete frank's, drain a host, or apply policies.
    denied = [
        ("GET", "/services/elsa/api/users/frank/sessions", None),
        ("POST", "/services/elsa/api/users/frank/migrate", {"to": "h1"}),
        ("DELETE", f"/services/elsa/api/checkpoints/{franks_cp}", None),
        ("POST", "/services/elsa/api/hosts/h2/drain", {"deadline_s": 10}),
        ("POST", "/services/elsa/api/retention/apply", {}),
        ("GET", "/services/elsa/api/rightsizing", None),
    ]
    for method, path, body in denied:
        r = stack.api(method, path, user="bob", json_body=body, check=False)
        assert r.status_code == 403, f"bob {method} {path}: {r.status_code} {r.text}"
    # Not even with a browser session (cookie, OAuth) instead of a token.
    browser = stack.login("bob")
    page = browser.get(stack.base + "/services/elsa/", timeout=30)  # the OAuth dance with the service
    assert page.status_code == 200 and "Elsa" in page.text, page.status_code
    r = browser.get(stack.base + "/services/elsa/api/users/frank/sessions", timeout=30)
    assert r.status_code == 403 and r.url.endswith("/users/frank/sessions"), (r.status_code, r.url)
    assert browser.get(stack.base + "/services/elsa/api/users/bob/sessions", timeout=30).status_code == 200
    # A cookie-authenticated write without the page's xsrf token is refused.
    r = browser.post(stack.base + "/services/elsa/api/users/bob/migrate", json={"to": "h1"}, timeout=30)
    assert r.status_code == 403, r.text

    # Unauthenticated: refused (the API) or sent to the hub's login (the page).
    for method, path in [("GET", "/services/elsa/api/overview"), ("GET", "/services/elsa/api/users/bob/sessions"),
                         ("POST", "/services/elsa/api/users/bob/migrate"), ("DELETE", f"/services/elsa/api/checkpoints/{franks_cp}"),
                         ("POST", "/services/elsa/api/hosts/h2/drain")]:
        r = requests.request(method, stack.base + path, json={}, timeout=30, allow_redirects=False)
        assert r.status_code in (401, 403), f"anonymous {method} {path}: {r.status_code}"
    r = stack.api("GET", "/services/elsa/api/overview", token="not-a-token", check=False, allow_redirects=False)
    assert r.status_code in (401, 403)
    r = requests.get(stack.base + "/services/elsa/", timeout=30, allow_redirects=False)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"], r.headers

    # Frank's checkpoint is still there; frank himself may delete it.
    assert stack.api("GET", "/services/elsa/api/users/frank/sessions", user="frank").json()["checkpoints"]
    stack.api("DELETE", f"/services/elsa/api/checkpoints/{franks_cp}", user="frank")
    left = stack.api("GET", "/services/elsa/api/users/frank/sessions", user="frank").json()["checkpoints"]
    assert franks_cp not in [c["id"] for c in left]
