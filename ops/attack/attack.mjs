// The client side of ops/attack.sh: one hostile scenario per run against a chatctl master (and
// its proxy), with a logged-in bystander who must still be served. Prints one line,
// `PASS name: figures` or `FAIL name: figures and why`, and exits 0 or 1.
//
//   node attack.mjs attachment-bomb BASE MAX_PAYLOAD WORKER_PIDS
//   node attack.mjs handshake-flood BASE COUNT
//   node attack.mjs never-reads     BASE BOUND_MS WORKER_PIDS
//   node attack.mjs slowloris       BASE PROXY_BASE COUNT WORKER_PIDS
//
// WORKER_PIDS is a comma-separated list (from `chatctl list --json`): the figures (resident
// memory, open descriptors, private sockets) come from their /proc entries.

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

import { login } from "../../bin/chatctl/tests/clients/login.mjs";

const require = createRequire(new URL("../js/package.json", import.meta.url));
let Manager, WebSocket;
try {
  ({ Manager } = require("socket.io-client"));
  WebSocket = require("ws");
} catch (error) {
  console.error(`socket.io-client and ws are not installed in ops/js/node_modules (${error.message}): run ops/test-deps.sh`);
  process.exit(3);
}

// Every wait has this deadline: generous on a loaded 2-core machine.
const DEADLINE_MS = 20_000;

const [scenario, ...args] = process.argv.slice(2);

function finish(passed, figures) {
  process.stdout.write(`${passed ? "PASS" : "FAIL"} ${scenario}: ${figures}\n`);
  process.exit(passed ? 0 : 1);
}

setTimeout(() => finish(false, "watchdog: the scenario did not end within 60 s"), 60_000).unref();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

/** Calls `probe` until it returns a value other than undefined, for at most DEADLINE_MS. */
async function waitFor(probe, intervalMs = 50) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) return undefined;
    await sleep(intervalMs);
  }
}

function pids(list) {
  return (list || "").split(",").filter(Boolean).map(Number);
}

function rssBytes(pid) {
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"));
    return Number(line.replace(/\D/g, "")) * 1024;
  } catch {
    return 0;
  }
}

const sum = (list, f) => list.reduce((total, pid) => total + f(pid), 0);

/** The next `event` on `socket` that `wanted` accepts, or a rejection after DEADLINE_MS. */
function next(socket, event, wanted = () => true, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`no ${what} within ${DEADLINE_MS} ms`));
    }, DEADLINE_MS);
    function listener(value) {
      if (!wanted(value)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(value);
    }
    socket.on(event, listener);
  });
}

/** The chat's echo of a line to its sender: a `message` event whose JSON says `myMessage`. */
function nextEcho(com) {
  const isEcho = (line) => {
    try {
      return JSON.parse(line).type === "myMessage";
    } catch {
      return false;
    }
  };
  return next(com, "message", isEcho, "myMessage");
}

/**
 * A logged-in user of the chat who joins `room` and sends a line; resolves with the time it
 * took once the line came back as `myMessage`.
 */
async function chat(base, nickname, room, localAddress) {
  const started = Date.now();
  const cookie = await login(base, nickname, { localAddress });
  const options = {
    transports: ["websocket"],
    reconnection: false,
    extraHeaders: { Cookie: cookie },
    localAddress,
  };
  const manager = new Manager(base, options);
  const infra = manager.socket("/chat_infra");
  const com = manager.socket("/chat_com");
  try {
    await Promise.all([next(infra, "connect"), next(com, "connect")]);
    const named = next(infra, "name_set");
    infra.emit("join_room", { name: room });
    await named;
    const echoed = nextEcho(com);
    com.emit("message", JSON.stringify({ type: "userMessage", message: `hello from ${nickname}` }));
    await echoed;
    return Date.now() - started;
  } finally {
    infra.disconnect();
    com.disconnect();
    manager.engine?.close();
  }
}

/** `ws://` of an Engine.IO websocket at `base`. */
function websocketUrl(base) {
  return `${base.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`;
}

/**
 * Twenty clients each declare a binary chat line with 10 attachments of 0.9 max_payload each
 * (9 times max_payload in all) and send the attachments one by one until the server closes
 * them. What they get to send beyond max_payload is what the socket buffers take in before the
 * server reads it.
 */
async function attachmentBomb([base, maxPayloadText, workerPids]) {
  const maxPayload = Number(maxPayloadText);
  const workers = pids(workerPids);
  const rssBefore = sum(workers, rssBytes);
  // Each attachment alone fits max_payload; two of them do not.
  const attachment = Buffer.alloc(Math.floor(maxPayload * 0.9), 0x61);
  const bombers = 20;

  async function bomb(index) {
    const cookie = await login(base, `bomber${index}`);
    const socket = new WebSocket(websocketUrl(base), { headers: { Cookie: cookie } });
    let closed = false;
    socket.on("close", () => {
      closed = true;
    });
    socket.on("error", () => {
      closed = true;
    });
    await new Promise((resolve, reject) => {
      socket.on("message", (data) => {
        const text = data.toString();
        if (text.startsWith("0")) socket.send("40/chat_com,");
        if (text.startsWith("40/chat_com,")) resolve();
        if (text === "2") socket.send("3");
      });
      setTimeout(() => reject(new Error("no namespace connect")), DEADLINE_MS);
    });
    socket.send(`4510-/chat_com,["message",${JSON.stringify(
      Array.from({ length: 10 }, (_, num) => ({ _placeholder: true, num })),
    )}]`);
    let sent = 0;
    for (let i = 0; i < 10 && !closed; i += 1) {
      const written = await new Promise((resolve) => socket.send(attachment, (error) => resolve(!error)));
      if (!written) break;
      sent += attachment.length;
    }
    const gotClosed = await waitFor(() => (closed ? true : undefined));
    return { sent, closed: gotClosed === true };
  }

  const results = await Promise.all(Array.from({ length: bombers }, (_, i) => bomb(i)));
  const rssAfter = sum(workers, rssBytes);
  let bystander;
  try {
    bystander = await chat(base, "bystander", "lobby");
  } catch (error) {
    bystander = error.message;
  }
  const closed = results.filter((r) => r.closed).length;
  const mostSent = Math.max(...results.map((r) => r.sent));
  const growth = rssAfter - rssBefore;
  const passed = closed === bombers && mostSent < 10 * attachment.length && growth < 64 << 20 && typeof bystander === "number";
  finish(
    passed,
    `${closed}/${bombers} bombers closed, at most ${mb(mostSent)} sent of a declared ${mb(10 * attachment.length)} (max_payload ${mb(maxPayload)}), ` +
      `workers' RSS ${growth >= 0 ? "+" : ""}${mb(growth)}, bystander ${typeof bystander === "number" ? `chatted in ${bystander} ms` : `failed: ${bystander}`}`,
  );
}

/** One polling handshake on a keep-alive agent; resolves with the status (0: no answer). */
function handshake(base, agent) {
  return new Promise((resolve) => {
    const request = http.get(`${base}/socket.io/?EIO=4&transport=polling`, { agent }, (response) => {
      response.resume();
      response.on("end", () => resolve(response.statusCode));
    });
    request.on("error", () => resolve(0));
  });
}

/**
 * COUNT Engine.IO handshakes from 127.0.0.1, 64 at a time, that never join a namespace; halfway
 * through, a user from 127.0.0.2 logs in, joins a room and chats.
 */
async function handshakeFlood([base, countText]) {
  const count = Number(countText);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64, localAddress: "127.0.0.1" });
  const statuses = {};
  let started = 0;
  let userResult;
  const started_at = Date.now();
  async function flooder() {
    while (started < count) {
      started += 1;
      if (started === Math.floor(count / 2)) {
        userResult = chat(base, "elsewhere", "lobby", "127.0.0.2").catch((error) => error.message);
      }
      const status = await handshake(base, agent);
      statuses[status] = (statuses[status] || 0) + 1;
    }
  }
  await Promise.all(Array.from({ length: 64 }, flooder));
  const floodMs = Date.now() - started_at;
  agent.destroy();
  const user = await userResult;
  const passed = typeof user === "number" && Object.values(statuses).reduce((a, b) => a + b, 0) === count;
  const answered = Object.entries(statuses).map(([status, n]) => `${n}x ${status === "0" ? "no answer" : status}`).join(", ");
  finish(
    passed,
    `${count} handshakes from 127.0.0.1 in ${(floodMs / 1000).toFixed(1)} s (${answered}), ` +
      `user from 127.0.0.2 ${typeof user === "number" ? `logged in and chatted in ${user} ms` : `failed: ${user}`}`,
  );
}

/** A masked websocket text frame (clients must mask), for the client that never reads. */
function textFrame(text) {
  const payload = Buffer.from(text);
  if (payload.length > 125) throw new Error("frame too long for this helper");
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

/**
 * A logged-in client joins a room over a websocket written by hand and then never reads a byte
 * (not even the handshake's answer) while a talker fills the room; the worker must close it
 * and free its descriptor within BOUND_MS (ping interval + ping timeout + write timeout).
 */
async function neverReads([base, boundText, workerPids]) {
  const bound = Number(boundText);
  const workers = pids(workerPids);
  // From an address of its own: the handshake flood before may still fill 127.0.0.1's
  // pending sessions (--max-pending-per-address) until their --connect-timeout.
  const localAddress = "127.0.0.3";
  const cookie = await login(base, "deaf", { localAddress });
  const url = new URL(base);
  const client = net.connect({ host: url.hostname, port: Number(url.port), localAddress });
  await new Promise((resolve, reject) => {
    client.once("connect", resolve);
    client.once("error", reject);
  });
  const clientPort = client.localPort;
  // Never read: the kernel's receive buffer fills, then the server's send buffer.
  client.pause();
  client.write(
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n" +
      `Host: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n` +
      `Cookie: ${cookie}\r\n\r\n`,
  );
  client.write(textFrame("40/chat_infra,"));
  client.write(textFrame("40/chat_com,"));
  await sleep(200); // the namespace connects are answered before the join is read
  client.write(textFrame('42/chat_infra,["join_room",{"name":"deafroom"}]'));
  // The server's end of this connection, and the worker it was handed to.
  const inode = await waitFor(() => serverSocketInode(Number(url.port), clientPort));
  const holder = inode && (await waitFor(() => workers.find((pid) => holdsSocket(pid, inode))));
  const held = holder !== undefined;
  const stoppedReading = Date.now();

  // A talker in the same room, as fast as the chat lets one connection talk.
  const talkerCookie = await login(base, "talker", { localAddress });
  const options = { transports: ["websocket"], reconnection: false, extraHeaders: { Cookie: talkerCookie }, localAddress };
  const manager = new Manager(base, options);
  const infra = manager.socket("/chat_infra");
  const com = manager.socket("/chat_com");
  await Promise.all([next(infra, "connect"), next(com, "connect")]);
  const named = next(infra, "name_set");
  infra.emit("join_room", { name: "deafroom" });
  await named;
  const line = JSON.stringify({ type: "userMessage", message: "x".repeat(1900) });
  const talk = setInterval(() => com.emit("message", line), 50);
  const freed = held ? await waitFor(() => (holdsSocket(holder, inode) ? undefined : Date.now())) : undefined;
  clearInterval(talk);
  manager.engine?.close();
  client.destroy();
  const elapsed = freed === undefined ? undefined : freed - stoppedReading;
  const passed = held === true && elapsed !== undefined && elapsed <= bound;
  finish(
    passed,
    elapsed === undefined
      ? `the non-reading client's descriptor was ${held ? "still open" : "never seen"} after ${DEADLINE_MS} ms (bound ${bound} ms)`
      : `closed and its descriptor gone ${elapsed} ms after it stopped reading (bound: ping interval + timeout + write timeout = ${bound} ms)`,
  );
}

/** The inode of the server's end of the TCP connection from `clientPort` to `serverPort`. */
function serverSocketInode(serverPort, clientPort) {
  const hexPort = (port) => port.toString(16).toUpperCase().padStart(4, "0");
  const row = fs
    .readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    // Connections closed earlier on the same ports linger in TIME_WAIT, with no inode.
    .find((f) => f.length > 9 && f[9] !== "0" && f[1].endsWith(`:${hexPort(serverPort)}`) && f[2].endsWith(`:${hexPort(clientPort)}`));
  return row ? row[9] : undefined;
}

/** Whether process `pid` holds the socket `inode` open. */
function holdsSocket(pid, inode) {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === `socket:[${inode}]`;
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/** The abstract unix sockets the workers listen on (their private sockets), from /proc. */
function privateSockets(workers) {
  const inodes = new Set();
  for (const pid of workers) {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      try {
        const link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
        const inode = /^socket:\[(\d+)\]$/.exec(link);
        if (inode) inodes.add(inode[1]);
      } catch {
        // closed meanwhile
      }
    }
  }
  const listening = 0x10000; // __SO_ACCEPTCON
  return fs
    .readFileSync("/proc/net/unix", "utf8")
    .split("\n")
    .slice(1)
    .map((row) => row.trim().split(/\s+/))
    .filter((f) => f.length >= 8 && inodes.has(f[6]) && (parseInt(f[3], 16) & listening) && f[7].startsWith("@"))
    .map((f) => `\0${f[7].slice(1)}`);
}

/**
 * A slow client that sends `opening` and then one more byte of `drip` every 500 ms, never
 * finishing; resolves with how long the server let it live (undefined: never closed;
 * "refused": it never connected).
 */
function slowClient(connectOptions, opening, drip) {
  return new Promise((resolve) => {
    const socket = net.connect(connectOptions);
    const started = Date.now();
    let timer;
    let position = 0;
    const done = (value) => {
      clearInterval(timer);
      socket.destroy();
      resolve(value);
    };
    let connected = false;
    socket.on("connect", () => {
      connected = true;
      socket.write(opening);
      timer = setInterval(() => {
        socket.write(drip[position % drip.length]);
        position += 1;
      }, 500);
    });
    socket.on("data", () => {}); // a 408 or 400 before the close is fine
    socket.on("close", () => done(connected ? Date.now() - started : "refused"));
    socket.on("error", () => {});
    setTimeout(() => done(undefined), DEADLINE_MS + 5_000);
  });
}

/**
 * COUNT slow clients on each listener: the master's request-line peek, a worker (a request
 * line, then headers that never end), `chatctl proxy` and each worker's private socket.
 * Meanwhile users log in and chat through the master and through the proxy.
 */
async function slowloris([base, proxyBase, countText, workerPids]) {
  const count = Number(countText);
  const master = new URL(base);
  const proxy = new URL(proxyBase);
  const onMaster = { host: master.hostname, port: Number(master.port) };
  const onProxy = { host: proxy.hostname, port: Number(proxy.port) };
  const header = "X-Slow: slowloris\r\n";
  const listeners = {
    "master peek": { options: onMaster, opening: "GET /socket.io/?EIO=4", drip: "&x=1" },
    worker: { options: onMaster, opening: "GET /healthz HTTP/1.1\r\nHost: x\r\n", drip: header },
    proxy: { options: onProxy, opening: "GET /socket.io/?EIO=4", drip: "&x=1" },
  };
  const slow = Object.entries(listeners).map(([name, l]) =>
    Promise.all(Array.from({ length: count }, () => slowClient(l.options, l.opening, l.drip))).then((lives) => [name, lives]),
  );
  // Node 20 cannot connect to an abstract unix socket: a Python helper drips on those.
  const privates = privateSockets(pids(workerPids));
  const deadlineSeconds = String((DEADLINE_MS + 5_000) / 1000);
  const helper = fileURLToPath(new URL("slow_private.py", import.meta.url));
  const slowPrivates = new Promise((resolve) => {
    execFile("python3", [helper, String(count), deadlineSeconds, ...privates.map((p) => `@${p.slice(1)}`)], (error, stdout) => {
      if (error) resolve([["private sockets", [`helper failed: ${error.message}`]]]);
      else resolve(Object.values(JSON.parse(stdout)).map((lives, i) => [`private socket ${i}`, lives]));
    });
  });
  await sleep(500); // the slow clients are connected and dripping
  const users = await Promise.all([
    chat(base, "loris1", "lobby").catch((error) => `through the master: ${error.message}`),
    chat(proxyBase, "loris2", "lobby").catch((error) => `through the proxy: ${error.message}`),
  ]);
  const results = [...(await Promise.all(slow)), ...(await slowPrivates)];
  const figures = results.map(([name, lives]) => {
    const closed = lives.filter((life) => typeof life === "number");
    const longest = closed.length ? Math.max(...closed) : 0;
    const refused = lives.filter((life) => typeof life === "string");
    return { name, closed: closed.length, longest, refused };
  });
  const served = users.every((u) => typeof u === "number");
  const passed = served && privates.length > 0 && figures.every((f) => f.closed === count);
  finish(
    passed,
    figures
      .map((f) => `${f.name} ${f.closed}/${count} closed by ${(f.longest / 1000).toFixed(1)} s${f.refused.length ? ` (${f.refused.length} not connected: ${f.refused[0]})` : ""}`)
      .join(", ") +
      `; users ${served ? `chatted through the master and the proxy in ${users.join(" and ")} ms` : `failed: ${users.filter((u) => typeof u !== "number").join("; ")}`}` +
      (privates.length ? "" : "; no private socket found in /proc/net/unix"),
  );
}

const scenarios = {
  "attachment-bomb": attachmentBomb,
  "handshake-flood": handshakeFlood,
  "never-reads": neverReads,
  slowloris,
};
if (!scenarios[scenario]) {
  console.error(`usage: node attack.mjs ${Object.keys(scenarios).join("|")} ARGS (see the head of this file)`);
  process.exit(2);
}
scenarios[scenario](args).catch((error) => finish(false, `${error.message}`));
