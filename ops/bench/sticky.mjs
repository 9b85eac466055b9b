// Load client of ops/bench/sticky.sh: prepares long-polling sessions for wrk, and measures
// websocket echo throughput of the chat, through whatever routes requests (one worker, the
// master, chatctl proxy, HAProxy, nginx).
//
//   node sticky.mjs sessions URL COUNT
//       Opens COUNT Socket.IO sessions over polling, each as a real client would: POST /login
//       (the chat_session cookie), the Engine.IO handshake, CONNECT to /chat_com, and the GET
//       that brings the CONNECT answer. Prints one sid a line. Every request after the handshake
//       carries the sid, so it goes where the sid says.
//   node sticky.mjs echo URL CONNECTIONS IN_FLIGHT SECONDS
//       CONNECTIONS users (npm socket.io-client 4.x over websocket) log in, each joins a room of
//       its own on /chat_infra, then keeps IN_FLIGHT `message`s outstanding on /chat_com: every
//       `myMessage` echo sends the next one. Counts the echoes over SECONDS after one second of
//       warm-up and prints {"echoes":N,"seconds":S,"per_second":R}.
//
// The chat must allow that many messages a second (chatctl serve --messages-per-second).

import { createRequire } from "node:module";
import http from "node:http";

// ESM ignores NODE_PATH: resolve the client from the workspace's ops/js (ops/test-deps.sh
// installs it there).
const require = createRequire(new URL("../js/package.json", import.meta.url));

// Nothing here waits for long: a stuck run fails instead of hanging the script.
const WATCHDOG_MS = 120_000;
setTimeout(() => {
  console.error("sticky.mjs: watchdog: no result in time");
  process.exit(1);
}, WATCHDOG_MS).unref();

const [command, url, ...numbers] = process.argv.slice(2);
const base = new URL(url || "http://invalid");
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

/** One HTTP request on the keep-alive agent; resolves with {status, headers, body}. */
function request(method, path, { body = "", headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const outgoing = http.request(
      new URL(path, base),
      { method, agent, headers: { "Content-Length": Buffer.byteLength(body), ...headers } },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => (text += chunk));
        response.on("end", () => resolve({ status: response.statusCode, headers: response.headers, body: text }));
      },
    );
    outgoing.on("error", (error) => reject(new Error(`${method} ${path}: ${error.message}`)));
    outgoing.end(body);
  });
}

/** POST /login; the `chat_session=...` cookie pair. */
async function login(nickname) {
  const answer = await request("POST", "/login", {
    body: new URLSearchParams({ nickname }).toString(),
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
  });
  const cookie = (answer.headers["set-cookie"] || [])
    .map((header) => header.split(";")[0])
    .find((pair) => pair.startsWith("chat_session="));
  if (!cookie) throw new Error(`POST /login answered ${answer.status} without a session cookie`);
  return cookie;
}

/** A polling session joined to /chat_com; its sid. */
async function pollingSession(index) {
  const Cookie = await login(`poll${index}`);
  const path = "/socket.io/?EIO=4&transport=polling";
  const open = await request("GET", path, { headers: { Cookie } });
  const sid = open.status === 200 && JSON.parse(open.body.slice(1)).sid;
  if (!sid) throw new Error(`handshake answered ${open.status}: ${open.body}`);
  const session = `${path}&sid=${encodeURIComponent(sid)}`;
  const connect = await request("POST", session, {
    body: "40/chat_com,",
    headers: { Cookie, "Content-Type": "text/plain;charset=UTF-8" },
  });
  if (connect.body !== "ok") throw new Error(`CONNECT answered ${connect.status}: ${connect.body}`);
  const connected = await request("GET", session, { headers: { Cookie } });
  if (!connected.body.split("\x1e").some((packet) => packet.startsWith("40/chat_com,"))) {
    throw new Error(`no CONNECT answer for ${sid}: ${connected.status} ${connected.body}`);
  }
  return sid;
}

async function sessions(count) {
  const sids = [];
  // A few at a time, as clients arrive.
  for (let first = 0; first < count; first += 16) {
    const batch = Array.from({ length: Math.min(16, count - first) }, (_, i) => pollingSession(first + i));
    sids.push(...(await Promise.all(batch)));
  }
  process.stdout.write(sids.join("\n") + "\n");
}

/** One websocket user in a room of its own, keeping `inFlight` messages outstanding. */
async function echoUser(index, inFlight, counter) {
  const { Manager } = require("socket.io-client");
  const Cookie = await login(`echo${index}`);
  const manager = new Manager(base.href, {
    transports: ["websocket"],
    extraHeaders: { Cookie },
    reconnection: false,
  });
  const infra = manager.socket("/chat_infra");
  const com = manager.socket("/chat_com");
  const line = JSON.stringify({ type: "userMessage", message: "echo" });
  await new Promise((resolve, reject) => {
    infra.on("connect_error", reject);
    com.on("connect_error", reject);
    infra.on("connect", () => infra.emit("join_room", { name: `echo-${index}` }));
    infra.on("name_set", resolve);
  });
  com.on("error", (error) => {
    console.error(`sticky.mjs: echo${index}: ${JSON.stringify(error)}`);
    process.exit(1);
  });
  com.on("message", (text) => {
    if (!text.includes('"myMessage"')) return;
    counter.echoes += 1;
    com.emit("message", line);
  });
  const start = () => {
    for (let i = 0; i < inFlight; i++) com.emit("message", line);
  };
  if (com.connected) start();
  else com.once("connect", start);
  return manager;
}

async function echo(connections, inFlight, seconds) {
  const counter = { echoes: 0 };
  const managers = [];
  for (let first = 0; first < connections; first += 16) {
    const batch = Array.from({ length: Math.min(16, connections - first) }, (_, i) =>
      echoUser(first + i, inFlight, counter),
    );
    managers.push(...(await Promise.all(batch)));
  }
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const before = counter.echoes;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const elapsed = (performance.now() - started) / 1000;
  const echoes = counter.echoes - before;
  process.stdout.write(
    JSON.stringify({ echoes, seconds: Number(elapsed.toFixed(2)), per_second: Math.round(echoes / elapsed) }) + "\n",
  );
  for (const manager of managers) manager.engine && manager.engine.close();
  process.exit(0);
}

const valid = (n) => Number.isInteger(n) && n > 0;
const [a, b, c] = numbers.map(Number);
try {
  if (command === "sessions" && valid(a)) await sessions(a);
  else if (command === "echo" && valid(a) && valid(b) && valid(c)) await echo(a, b, c);
  else {
    console.error("usage: node sticky.mjs sessions URL COUNT | echo URL CONNECTIONS IN_FLIGHT SECONDS");
    process.exit(2);
  }
} catch (error) {
  console.error(`sticky.mjs: ${error.message}`);
  process.exit(1);
}
process.exit(0);
