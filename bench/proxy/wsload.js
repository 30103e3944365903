// Websocket load for the benchmark, through a proxy to backend.js's echo.
//   node wsload.js rtt  PORT CONNECTIONS SECONDS  -> {"msgs_per_s", "p50_ms", "p99_ms"}
//   node wsload.js idle PORT CONNECTIONS          -> prints {"open": N} once all are open, then
//                                                    holds them until stdin closes
// Each connection in rtt mode keeps one 64-byte message in flight: send, wait for the echo.
"use strict";
const net = require("net");
const crypto = require("crypto");

const [mode, port, count, seconds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]),
                                      Number(process.argv[5] || 0)];
const payload = Buffer.alloc(64, "x");

function frame(data) {
  const mask = crypto.randomBytes(4);
  const out = Buffer.alloc(2 + 4 + data.length);
  out[0] = 0x81; out[1] = 0x80 | data.length; mask.copy(out, 2);
  for (let i = 0; i < data.length; i++) out[6 + i] = data[i] ^ mask[i & 3];
  return out;
}

function open(onMessage) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    s.setNoDelay(true);
    let handshaken = false, buf = Buffer.alloc(0);
    s.on("connect", () => s.write(`GET /bench/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\n` +
      "Sec-WebSocket-Version: 13\r\n\r\n"));
    s.on("data", (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (!handshaken) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!buf.subarray(0, 12).toString().includes("101")) { reject(new Error(buf.toString())); return; }
        handshaken = true; buf = buf.subarray(end + 4); resolve(s);
      }
      for (;;) {
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f, at = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); at = 4; }
        if (buf.length < at + len) return;
        const op = buf[0] & 0x0f;
        buf = buf.subarray(at + len);
        if (op === 0x9) { s.write(Buffer.from([0x8a, 0x80, 0, 0, 0, 0])); continue; }  // pong
        if (op === 0x1 || op === 0x2) onMessage(s);
      }
    });
    s.on("error", reject);
  });
}

async function rtt() {
  const samples = [];
  let total = 0, running = true;
  const sent = new Map();
  const socks = [];
  for (let i = 0; i < count; i++) {
    socks.push(await open((s) => {
      const t = process.hrtime.bigint();
      samples.push(Number(t - sent.get(s)) / 1e6);
      total++;
      if (running) { sent.set(s, process.hrtime.bigint()); s.write(frame(payload)); }
    }));
  }
  const start = process.hrtime.bigint();
  for (const s of socks) { sent.set(s, process.hrtime.bigint()); s.write(frame(payload)); }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  running = false;
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  samples.sort((a, b) => a - b);
  const q = (p) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))];
  console.log(JSON.stringify({ msgs_per_s: total / elapsed, p50_ms: q(0.5), p99_ms: q(0.99) }));
  process.exit(0);
}

async function idle() {
  const socks = [];
  for (let i = 0; i < count; i += 200) {  // in batches, so the listen backlog is not the limit
    const batch = [];
    for (let j = i; j < Math.min(count, i + 200); j++) batch.push(open(() => {}));
    socks.push(...await Promise.all(batch));
  }
  console.log(JSON.stringify({ open: socks.length }));
  process.stdin.resume();
  process.stdin.on("end", () => process.exit(0));
}

(mode === "rtt" ? rtt() : idle()).catch((e) => { console.error(String(e)); process.exit(1); });
