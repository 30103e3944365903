"""An asyncio client for elsad's API (JSON lines over its Unix socket, or over TLS 1.3 with a token
or a client certificate), and the translation of the agent's progress events into phases with a
percentage.

The agent answers one request per connection: zero or more `{"event": "progress", "phase",
"detail"}` lines while it works, then `{"ok": true, "result": ...}` or `{"ok": false, "error":
{"code", "message"}}` (engine/include/elsa/engine/api.h).
"""

import asyncio
import json
import ssl


class AgentError(RuntimeError):
    def __init__(self, host, op, code, message):
        self.host, self.op, self.code = host, op, code
        super().__init__(f"elsad on {host}: {op} failed ({code}): {message}")


_LINE_LIMIT = 64 * 2**20  # a reply lists every session or checkpoint


class AgentClient:
    def __init__(self, host):
        self.host = host  # config.Host
        self.where = host.api or host.socket

    def _tls_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.host.ca)  # verifies name and chain
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.host.cert:
            ctx.load_cert_chain(self.host.cert, self.host.key)
        return ctx

    def _token(self):
        """The hub's token (read at each call: an operator may rotate the file)."""
        if not self.host.token_file:
            return None
        with open(self.host.token_file) as f:
            return f.readline().strip()

    async def _connect(self, request):
        if not self.host.api:
            return await asyncio.open_unix_connection(self.host.socket, limit=_LINE_LIMIT)
        host, _, port = self.host.api[len("tls://"):].rpartition(":")
        host = host.strip("[]")
        token = self._token()
        if token:
            request["token"] = token
        return await asyncio.open_connection(host, int(port), ssl=self._tls_context(), server_hostname=host,
                                             limit=_LINE_LIMIT)

    async def call(self, op, on_event=None, timeout=900, on_freeze_gate=None, **fields):
        """`on_freeze_gate` (migrate): awaited when the agent is about to freeze the session; it
        returns normally to go on, or raises to cancel with the session still running."""
        request = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
        if on_freeze_gate is not None:
            request["freeze_gate"] = True
        try:
            reader, writer = await asyncio.wait_for(self._connect(request), 10)
        except ssl.SSLCertVerificationError as e:
            raise AgentError(self.host.name, op, "unauthenticated",
                             f"the agent at {self.where} presented a certificate that does not verify against "
                             f"{self.host.ca}: {e.verify_message}") from None
        except (OSError, asyncio.TimeoutError) as e:
            how = "--api-listen" if self.host.api else "as root, with this --socket"
            raise AgentError(self.host.name, op, "unavailable",
                             f"cannot reach the agent at {self.where} ({e or 'timeout'}); is elsad running there "
                             f"({how})?") from None
        try:
            writer.write((json.dumps(request) + "\n").encode())
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout)
                if not line:
                    raise AgentError(self.host.name, op, "unavailable", "the agent closed the connection without an answer")
                msg = json.loads(line)
                if msg.get("event") == "freeze-gate":
                    try:
                        await on_freeze_gate()
                        answer = {"freeze": True}
                    except Exception as e:  # noqa: BLE001 - its message goes to the agent, which cancels
                        answer = {"freeze": False, "reason": str(e)}
                    writer.write((json.dumps(answer) + "\n").encode())
                    await writer.drain()
                    continue
                if "event" in msg:
                    if on_event:
                        on_event(msg)
                    continue
                if msg.get("ok"):
                    return msg.get("result", {})
                err = msg.get("error", {})
                message = err.get("message", str(msg))
                if err.get("code") == "unauthenticated" and self.host.api:
                    message = f"the agent at {self.where} refused the hub's credentials: {message}"
                raise AgentError(self.host.name, op, err.get("code", "?"), message)
        except asyncio.TimeoutError:
            raise AgentError(self.host.name, op, "timeout", f"no answer within {timeout} s") from None
        except ssl.SSLError as e:  # TLS 1.3: the agent's verdict on our certificate arrives with the first read
            raise AgentError(self.host.name, op, "unauthenticated",
                             f"the agent at {self.where} refused the TLS connection: {e.reason or e}") from None
        finally:
            writer.close()

    async def sessions(self):
        return {s["name"]: s for s in await self.call("ps", timeout=30)}

    async def checkpoints(self):
        return await self.call("checkpoints", timeout=60)


# Progress. The agent reports phases in a fixed order per operation, each event with named fields
# besides its sentence (engine/include/elsa/engine/progress.h): "round", "bytes_done",
# "bytes_total", "pages", "rate_bytes_per_s", "eta_seconds", "seconds". The percentage is the
# phase's place in that order, refined by the pre-copy rounds and post-copy's bytes, which is
# what a progress bar can honestly say before the operation ends.
_RESTORE = {"verify": 10, "pages": 30, "lazy": 45, "restore": 55, "criu": 70}
_CHECKPOINT = {"dump": 10, "criu": 30, "pages": 60, "commit": 80}
_MIGRATE = {"connect": 5, "precopy": 15, "gate": 56, "freeze": 60, "criu": 65, "transfer": 75, "restore": 85, "running": 90,
            "postcopy": 90}
PHASE_PERCENT = {"restore": _RESTORE, "checkpoint": _CHECKPOINT, "migrate": _MIGRATE}


def progress_percent(operation, event, previous=0):
    """Percentage (0-100, never going back) for an agent progress event of `operation`."""
    phase = event.get("phase", "")
    pct = PHASE_PERCENT.get(operation, {}).get(phase, previous)
    if operation == "migrate" and phase == "precopy" and isinstance(event.get("round"), int):
        pct = 15 + min(40, 40 * (1 - 0.5 ** event["round"]))  # each round sends less; 15%..55%
    if operation == "migrate" and phase == "postcopy" and event.get("bytes_total"):
        pct = 90 + 9 * min(1, event.get("bytes_done", 0) / event["bytes_total"])  # never 100 before the result
    return max(previous, int(pct))


def event_bytes(event):
    """Bytes the event speaks of: what its phase has done (a round's bytes sent), else what it
    will do (a restore's files), else its pages; None if it names no amount."""
    for key in ("bytes_done", "bytes_total"):
        if isinstance(event.get(key), int):
            return event[key]
    if isinstance(event.get("pages"), int):
        return event["pages"] * 4096
    return None
