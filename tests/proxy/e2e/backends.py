"""Small real backends for the tests and the benchmark.

  backends.py http PORT   answers every request with JSON: method, path, headers, body length
  backends.py ws PORT     a websocket echo server (offers Jupyter's v1 subprotocol)
"""

import asyncio
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                          "body_bytes": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


async def ws_main(port):
    import websockets

    async def echo(ws, path):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", port, max_size=None,
                                subprotocols=["v1.kernel.websocket.jupyter.org"]):
        await asyncio.Future()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
    else:
        asyncio.run(ws_main(port))
