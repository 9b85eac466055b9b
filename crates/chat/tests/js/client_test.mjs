// Runs our browser Socket.IO client (crates/chat/assets/socket.io.js) in Node against a live
// server and checks the behaviours a chat page relies on. One JSON line per scenario; exit 0 only
// if all passed.
//
//   node --experimental-websocket crates/chat/tests/js/client_test.mjs http://127.0.0.1:3000
//
// (--experimental-websocket gives Node 20 the global WebSocket; Node 22 has it already.)
// The server must have the events of reference_server.mjs: echo, echo-event, request-ack,
// transport, whoami, close-me, disconnect-me on "/" and "/admin", and a "/private" namespace whose
// middleware refuses everyone with {message: "not authorized", data: {code: 42}}.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import net from "node:net";
import vm from "node:vm";

const base = (process.argv[2] || "").replace(/\/$/, "");
// A server with connection-state recovery, for the recovery scenarios (optional).
const recoveryBase = (process.argv[3] || "").replace(/\/$/, "");
if (!/^https?:\/\//.test(base)) {
  console.error("usage: node --experimental-websocket client_test.mjs http://HOST:PORT");
  process.exit(2);
}
if (typeof WebSocket !== "function") {
  console.error("no global WebSocket: run node with --experimental-websocket (Node 20)");
  process.exit(2);
}

// Loaded as a browser loads it: a plain script that defines the global `io`.
const clientFile = new URL("../../assets/socket.io.js", import.meta.url);
vm.runInThisContext(readFileSync(clientFile, "utf8"), { filename: clientFile.pathname });
const io = globalThis.io;

/** Generous: these are loopback round trips, but the machine may be busy running other tests. */
const SCENARIO_DEADLINE_MS = 20_000;

function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** The arguments of the next `event` on `emitter`. */
function next(emitter, event) {
  let listener;
  const fired = new Promise((resolve) => {
    listener = (...args) => resolve(args);
    emitter.once(event, listener);
  });
  return withDeadline(fired, SCENARIO_DEADLINE_MS, `"${event}"`).finally(() =>
    emitter.off(event, listener),
  );
}

/** Resolves once the socket is connected; a connect_error fails it. */
function connected(socket) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onConnect = () => {
      socket.off("connect_error", onError);
      resolve();
    };
    const onError = (err) => {
      socket.off("connect", onConnect);
      reject(new Error(`connect_error on ${socket.nsp}: ${err.message}`));
    };
    socket.once("connect", onConnect);
    socket.once("connect_error", onError);
  });
}

/** Emits with an ack callback; resolves with the ack's arguments. */
function ack(socket, event, ...args) {
  return withDeadline(
    new Promise((resolve) => socket.emit(event, ...args, (...answer) => resolve(answer))),
    SCENARIO_DEADLINE_MS,
    `the ack of "${event}"`,
  );
}

/** Resolves once the connection runs over a websocket (after the upgrade from polling). */
async function upgraded(socket) {
  const engine = socket.io.engine;
  assert.ok(engine, "the manager has a connection");
  if (engine.transport.name !== "websocket") await next(engine, "upgrade");
  assert.equal(engine.transport.name, "websocket");
}

function bytes(buffer) {
  const kind = Object.prototype.toString.call(buffer);
  assert.ok(buffer instanceof ArrayBuffer, `expected an ArrayBuffer, got ${kind}`);
  return Array.from(new Uint8Array(buffer));
}

/** Binary both ways: a BINARY_EVENT echoed as an event and a BINARY_ACK. */
async function exerciseBinary(socket) {
  const backing = new Uint8Array([0, 0, 1, 2, 3, 250, 0]);
  const view = new Uint8Array(backing.buffer, 2, 4); // only its 4 bytes may travel
  const nested = new Uint8Array([9, 8, 7]).buffer;
  const large = new Uint8Array(100_000).map((_, i) => (i * 7) & 0xff); // past one base64 slice
  const echoed = next(socket, "echo-event");
  socket.emit("echo-event", view, { label: "x", nested, list: [large] }, "text");
  const [first, object, text] = await echoed;
  assert.deepEqual(bytes(first), [1, 2, 3, 250]);
  assert.equal(object.label, "x");
  assert.deepEqual(bytes(object.nested), [9, 8, 7]);
  assert.deepEqual(bytes(object.list[0]), Array.from(large));
  assert.equal(text, "text");

  const answer = await ack(socket, "echo", "text", new Uint8Array([5, 6]));
  assert.equal(answer[0], "text");
  assert.deepEqual(bytes(answer[1]), [5, 6]);
}

async function transportOnServer(socket) {
  const [name] = await ack(socket, "transport");
  return name;
}

const scenarios = [];
function scenario(name, run) {
  scenarios.push({ name, run });
}

scenario("multiplex_namespaces_share_one_connection", async (open) => {
  const main = open(`${base}/`, { query: { tag: "first" } });
  const admin = open(`${base}/admin`, { query: { tag: "second" }, auth: { token: "t1" } });
  assert.equal(main.io, admin.io, "both namespaces use one manager");
  await Promise.all([connected(main), connected(admin)]);
  assert.ok(main.id && admin.id && main.id !== admin.id);
  const [mine] = await ack(main, "whoami");
  const [theirs] = await ack(admin, "whoami");
  assert.equal(mine.nsp, "/");
  assert.equal(theirs.nsp, "/admin");
  // The server saw one handshake: the one of the first io() call.
  assert.equal(mine.tag, "first");
  assert.equal(theirs.tag, "first");
  assert.deepEqual(theirs.auth, { token: "t1" });
  // Leaving one namespace keeps the connection for the other.
  const left = next(admin, "disconnect");
  admin.disconnect();
  assert.equal((await left)[0], "io client disconnect");
  assert.equal(main.io.readyState, "open");
  assert.deepEqual(await ack(main, "echo", "still here"), ["still here"]);
});

scenario("page_relative_urls_use_the_page_origin", async (open) => {
  // As on a page served by the chat server: io("/nsp") and io() mean this page's origin.
  globalThis.location = new URL(`${base}/chatroom?room=lobby`);
  try {
    const admin = open("/admin", { forceNew: true });
    const main = open({ forceNew: true });
    await Promise.all([connected(admin), connected(main)]);
    assert.equal((await ack(admin, "whoami"))[0].nsp, "/admin");
    assert.equal((await ack(main, "whoami"))[0].nsp, "/");
  } finally {
    delete globalThis.location;
  }
});

scenario("emit_with_ack_buffered_before_connect", async (open) => {
  const socket = open(base, { forceNew: true });
  assert.equal(socket.connected, false);
  const answered = ack(socket, "echo", 1, "two", { three: [3] }, null);
  assert.deepEqual(await answered, [1, "two", { three: [3] }, null]);
  assert.equal(await socket.emitWithAck("echo", "promise"), "promise");
});

scenario("ack_timeout_reports_an_error", async (open) => {
  const socket = open(base, { forceNew: true });
  await connected(socket);
  const [err] = await withDeadline(
    new Promise((resolve) => socket.timeout(200).emit("nobody-answers", (...args) => resolve(args))),
    SCENARIO_DEADLINE_MS,
    "the ack timeout",
  );
  assert.ok(err instanceof Error && /timed out/.test(err.message), String(err));
});

scenario("server_to_client_event", async (open) => {
  const socket = open(base, { forceNew: true });
  const echoed = next(socket, "echo-event");
  socket.emit("echo-event", "hi", { n: 1 });
  assert.deepEqual(await echoed, ["hi", { n: 1 }]);
});

scenario("server_requests_an_ack", async (open) => {
  const socket = open(base, { forceNew: true });
  socket.on("question", (n, answer) => answer(n * 2));
  const reported = next(socket, "answer-received");
  socket.emit("request-ack", 21);
  assert.deepEqual(await reported, [42]);
});

scenario("polling_only_with_binary", async (open) => {
  const socket = open(base, { forceNew: true, transports: ["polling"] });
  await connected(socket);
  await exerciseBinary(socket);
  assert.equal(await transportOnServer(socket), "polling");
  assert.equal(socket.io.engine.transport.name, "polling");
});

scenario("polling_keeps_bodies_within_max_payload", async (open) => {
  // Both servers take at most 1e6 bytes per POST: three 400 kB messages need two POSTs.
  const socket = open(base, { forceNew: true, transports: ["polling"] });
  await connected(socket);
  const big = (i) => String(i).repeat(400_000);
  const answers = await Promise.all([0, 1, 2].map((i) => ack(socket, "echo", big(i))));
  answers.forEach(([text], i) => assert.ok(text === big(i), `message ${i} came back whole`));
  assert.equal(socket.connected, true);
});

scenario("websocket_only_with_binary", async (open) => {
  const socket = open(base, { forceNew: true, transports: ["websocket"] });
  await connected(socket);
  assert.equal(socket.io.engine.transport.name, "websocket");
  await exerciseBinary(socket);
  assert.equal(await transportOnServer(socket), "websocket");
});

scenario("upgrade_from_polling_keeps_order", async (open) => {
  const socket = open(base, { forceNew: true });
  await connected(socket);
  // Emitted while the upgrade runs: none may be lost or reordered.
  const arrivals = [];
  const burst = Array.from({ length: 30 }, (_, i) =>
    ack(socket, "echo", i).then(([n]) => arrivals.push(n)),
  );
  await upgraded(socket);
  await Promise.all(burst);
  assert.deepEqual(arrivals, Array.from({ length: 30 }, (_, i) => i));
  assert.equal(await transportOnServer(socket), "websocket");
  await exerciseBinary(socket);
});

scenario("connect_error_from_middleware", async (open) => {
  const socket = open(`${base}/private`, { forceNew: true });
  const [err] = await next(socket, "connect_error");
  assert.equal(err.message, "not authorized");
  assert.deepEqual(err.data, { code: 42 });
  assert.equal(socket.connected, false);
  assert.equal(socket.active, false, "a refused socket does not retry on its own");
});

scenario("connect_error_unknown_namespace", async (open) => {
  const socket = open(`${base}/no-such-namespace`, { forceNew: true });
  const [err] = await next(socket, "connect_error");
  assert.equal(err.message, "Invalid namespace");
});

for (const transports of [["websocket"], ["polling"], ["polling", "websocket"]]) {
  scenario(`reconnects_after_server_closes_${transports.join("_")}`, async (open) => {
    const socket = open(base, {
      forceNew: true,
      transports,
      reconnectionDelay: 50,
      reconnectionDelayMax: 200,
    });
    await connected(socket);
    if (transports.length > 1) await upgraded(socket);
    const firstId = socket.id;
    const disconnected = next(socket, "disconnect");
    const reconnected = next(socket, "connect");
    const attempt = next(socket.io, "reconnect_attempt");
    socket.emit("close-me");
    const [reason] = await disconnected;
    if (transports.length === 1 && transports[0] === "polling") {
      // Over polling the server says "close" in the pending GET. A server that forgets the
      // session at once (ours does) answers a GET that arrives just after with 400 instead.
      assert.ok(["transport close", "transport error"].includes(reason), reason);
    } else {
      assert.equal(reason, "transport close");
    }
    // Emitted while disconnected: buffered, sent once connected again.
    const echoed = ack(socket, "echo", "after");
    await attempt;
    await reconnected;
    assert.ok(socket.id && socket.id !== firstId, "a new namespace socket");
    assert.deepEqual(await echoed, ["after"]);
  });
}

if (recoveryBase) {
  for (const transports of [["websocket"], ["polling"]]) {
    scenario(`recovers_its_socket_and_missed_events_${transports.join("_")}`, async (open) => {
      const options = { forceNew: true, transports, reconnectionDelay: 300, reconnectionDelayMax: 300 };
      const socket = open(recoveryBase, options);
      const sender = open(recoveryBase, { forceNew: true });
      const got = [];
      socket.on("n", (n) => got.push(n));
      await Promise.all([connected(socket), connected(sender)]);
      const firstId = socket.id;
      await ack(socket, "join-room", "r");
      const first = next(socket, "n");
      await ack(sender, "to-room", "r", 1);
      await first;
      const disconnected = next(socket, "disconnect");
      const reconnected = next(socket, "connect");
      socket.emit("close-me");
      await disconnected;
      // Sent while it is away (or, on a fast machine, just after it is back): received once.
      await ack(sender, "to-room", "r", 2);
      await reconnected;
      assert.equal(socket.recovered, true, "the socket was recovered");
      assert.equal(socket.id, firstId, "the same socket");
      const live = next(socket, "n");
      await ack(sender, "to-room", "r", 3);
      await live;
      assert.deepEqual(got, [1, 2, 3]);
    });
  }
}

/** A loopback port that refuses connections (a listener opened, then closed). */
async function refusingPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

scenario("gives_up_after_reconnection_attempts", async (open) => {
  const port = await refusingPort();
  const socket = open(`http://127.0.0.1:${port}`, {
    forceNew: true,
    reconnectionAttempts: 2,
    reconnectionDelay: 10,
    reconnectionDelayMax: 20,
  });
  const errors = [];
  const attempts = [];
  socket.on("connect_error", (err) => errors.push(err.message));
  socket.io.on("reconnect_attempt", (n) => attempts.push(n));
  await next(socket.io, "reconnect_failed");
  assert.deepEqual(attempts, [1, 2]);
  assert.deepEqual(errors, ["xhr poll error", "xhr poll error", "xhr poll error"]);
  assert.equal(socket.connected, false);
});

scenario("connection_attempt_times_out", async (open) => {
  // A peer that accepts TCP connections and never answers: only the timeout ends the attempt.
  const peers = new Set();
  const silent = net.createServer((peer) => peers.add(peer));
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  try {
    const socket = open(`http://127.0.0.1:${silent.address().port}`, {
      forceNew: true,
      timeout: 300,
      reconnection: false,
    });
    const [err] = await next(socket, "connect_error");
    assert.equal(err.message, "timeout");
    assert.equal(socket.io.readyState, "closed");
  } finally {
    for (const peer of peers) peer.destroy();
    silent.close();
  }
});

scenario("server_disconnect_does_not_reconnect", async (open) => {
  const socket = open(base, { forceNew: true, reconnectionDelay: 50 });
  await connected(socket);
  const disconnected = next(socket, "disconnect");
  socket.emit("disconnect-me");
  assert.equal((await disconnected)[0], "io server disconnect");
  assert.equal(socket.active, false);
  assert.equal(socket.io.readyState, "closed", "no namespace left, so no connection");
});

scenario("client_disconnect", async (open) => {
  const socket = open(base, { forceNew: true });
  await connected(socket);
  const disconnected = next(socket, "disconnect");
  socket.disconnect();
  assert.equal((await disconnected)[0], "io client disconnect");
  assert.equal(socket.connected, false);
  assert.equal(socket.io.readyState, "closed");
  // And back, by hand.
  socket.connect();
  await connected(socket);
  assert.deepEqual(await ack(socket, "echo", "again"), ["again"]);
});

scenario("heartbeat_keeps_the_connection", async (open) => {
  // A client that does not answer pings is dropped pingTimeout after a ping: staying on one
  // connection for longer than pingInterval + pingTimeout, ping after ping, proves the pongs.
  const socket = open(base, { forceNew: true });
  await connected(socket);
  const id = socket.id;
  const { pingInterval, pingTimeout } = socket.io.engine;
  const pings = Math.ceil((pingInterval + pingTimeout) / pingInterval) + 2;
  assert.ok(pings <= 20, `the server pings too rarely for this test (${pingInterval} ms)`);
  for (let i = 0; i < pings; i++) await next(socket.io, "ping");
  assert.equal(socket.connected, true);
  assert.equal(socket.id, id, "never reconnected");
  assert.deepEqual(await ack(socket, "echo", "alive"), ["alive"]);
});

let failed = 0;
for (const { name, run } of scenarios) {
  const started = Date.now();
  const sockets = [];
  const history = []; // what happened to the connections, to explain a failure
  const open = (...args) => {
    const socket = io(...args);
    sockets.push(socket);
    const at = () => Date.now() - started;
    socket.on("disconnect", (reason) => history.push(`${at()}ms ${socket.nsp} disconnect: ${reason}`));
    socket.on("connect_error", (err) => history.push(`${at()}ms ${socket.nsp} connect_error: ${err.message}`));
    return socket;
  };
  const result = { scenario: name, ok: true };
  try {
    await withDeadline(run(open), SCENARIO_DEADLINE_MS, name);
  } catch (err) {
    failed++;
    result.ok = false;
    result.error = String((err && err.stack) || err);
    result.history = history;
  } finally {
    for (const socket of sockets) socket.disconnect();
  }
  result.ms = Date.now() - started;
  console.log(JSON.stringify(result));
}
console.log(`${scenarios.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
