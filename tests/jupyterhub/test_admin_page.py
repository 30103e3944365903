"""The admin page in Debian's headless Chromium, driven over the DevTools protocol: the admin logs
in to the hub, opens elsa-hub-service's page (OAuth), sees hosts, sessions and a rightsizing
proposal, presses migrate and watches the live progress to the end. Screenshots go to the test
artefacts directory."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import requests
import websocket

from hubstack import artifacts_dir, open_kernel

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Chromium:
    def __init__(self, stack):
        if not os.access(CHROMIUM, os.X_OK):
            pytest.fail("chromium missing: tools/bootstrap installs Debian's chromium")
        self.profile = tempfile.mkdtemp(prefix="elsa-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        # Root needs --no-sandbox; the browser runs on h3, where the proxy answers.
        self.proc = subprocess.Popen(stack.hosts.exec_prefix("h3") + [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--window-size=1400,1100",
            "about:blank"], stdout=self.log, stderr=self.log, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression, timeout=60, what=None):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None  # e.g. the page is navigating
            if value not in (None, False, "", 0):  # a DOM node comes back as {}: found
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}; page: "
                                     f"{self.eval('document.body ? document.body.innerText.slice(0, 1500) : location.href')}")
            time.sleep(0.2)

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'", what=url)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def test_admin_page_shows_sessions_and_hosts_and_migrates_with_live_progress(stack):
    user = "gina"
    stack.start_server(user, {"host": "h1"})
    k = open_kernel(stack, stack.login(user), user)
    # Enough memory to cross the rightsizing threshold of small h1 (10% of 2 GiB in the tests).
    k.execute("import numpy as np\nbig = np.ones(256 * 2**20 // 8)\ny = 7")
    browser = Chromium(stack)
    try:
        browser.goto(stack.base + "/hub/login")
        browser.wait("document.querySelector('input[name=username]')", what="the hub's login form")
        browser.eval("document.querySelector('input[name=username]').value = 'admin';"
                     "document.querySelector('input[name=password]').value = 'pw';"
                     "document.querySelector('form').submit(); true")
        browser.wait("location.pathname !== '/hub/login' && document.readyState === 'complete'", what="login")
        browser.goto(stack.base + "/services/elsa/")
        browser.wait("document.querySelector('#who') && document.querySelector('#who').textContent.includes('admin')",
                     what="the admin page (after OAuth with the hub)")
        row = "[...document.querySelectorAll('#sessions tbody tr')].find(r => r.dataset.user === 'gina')"
        browser.wait(f"{row} && {row}.innerText.includes('h1')", what="gina's session on h1")
        hosts = browser.eval("document.querySelector('#hosts').innerText")
        assert "h1" in hosts and "h2" in hosts and "small" in hosts and "large" in hosts, hosts
        proposal = browser.wait("[...document.querySelectorAll('#rightsizing tbody tr')].map(r => r.innerText)"
                                ".find(t => t.includes('gina'))", what="a rightsizing proposal for gina")
        assert "move to h2" in proposal, proposal
        browser.screenshot(os.path.join(artifacts_dir(), "admin-page-before.png"))

        browser.eval(f"{row}.querySelector('.dest').value = 'h2'; {row}.querySelector('.migrate').click(); true")
        browser.wait("[...document.querySelectorAll('#jobs tbody tr')].some(r => r.dataset.state === 'running')",
                     timeout=30, what="the migration's progress row")
        browser.wait("[...document.querySelectorAll('#jobs tbody tr')].some(r => r.dataset.state !== 'running')",
                     timeout=180, what="the migration's end")
        jobs = browser.eval("document.querySelector('#jobs').innerText")
        log = browser.eval("document.querySelector('#log').textContent")
        assert "done" in jobs and "downtime" in jobs, jobs
        for phase in ("pause", "precopy", "freeze", "restore", "resume", "hub"):
            assert f" {phase}:" in log, f"live progress lacks {phase}: {log}"
        browser.wait(f"{row} && {row}.innerText.includes('h2')", what="gina's session shown on h2")
        shot = browser.screenshot(os.path.join(artifacts_dir(), "admin-page.png"))
        assert os.path.getsize(shot) > 10000
    finally:
        browser.close()
    assert stack.where("jh-gina") == "h2"
    assert k.eval("y * 6") == "42"  # the page's migration kept the kernel's websocket and state
    k.close()
