// The official Node.js Socket.IO client (npm socket.io-client 4.x), driven by
// crates/socketio/tests/interop.rs against a real server of this crate.
//
//   node node_client.mjs <url> <scenario> [transport] [rooms]
//
// transport: "polling", "websocket" or "default" (polling, then upgraded to websocket).
// rooms: comma-separated rooms the server joins the client to (scenario "rooms").
//
// It prints one JSON object per line on stdout: what it saw, for the test to check. It ends
// with {"event":"done"} and status 0, or {"event":"error",...} and status 1.

import { createRequire } from "node:module";

// ESM ignores NODE_PATH: resolve the client from the workspace's ops/js, where
// ops/test-deps.sh installs it.
const require = createRequire(new URL("../../../../ops/js/package.json", import.meta.url));
let io;
try {
  ({ io } = require("socket.io-client"));
} catch (error) {
  console.error(`socket.io-client is not installed in ops/js/node_modules (${error.message}): run ops/test-deps.sh`);
  process.exit(3);
}

const [url, scenario, transport = "default", rooms = ""] = process.argv.slice(2);

// A test never waits on a silent client: give up well before the Rust side's deadline.
const WATCHDOG_MS = 20_000;
const ACK_TIMEOUT_MS = 10_000;

function report(event, fields = {}) {
  // Writes to a pipe are synchronous in Node on Linux, so nothing is lost by process.exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function done() {
  report("done");
  process.exit(0);
}

function fail(message) {
  report("error", { message });
  process.exit(1);
}

setTimeout(() => fail(`scenario ${scenario} did not finish within ${WATCHDOG_MS} ms`), WATCHDOG_MS);
process.on("unhandledRejection", (error) => fail(`unhandled rejection: ${error?.stack ?? error}`));

function options(extra = {}) {
  const opts = { reconnection: false, ...extra };
  if (transport === "polling") opts.transports = ["polling"];
  else if (transport === "websocket") opts.transports = ["websocket"];
  else if (transport !== "default") fail(`unknown transport ${transport}`);
  return opts;
}

function connected(socket) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (error) => reject(new Error(`connect_error: ${error.message}`)));
  });
}

function nextEvent(socket, name) {
  return new Promise((resolve) => socket.once(name, (...args) => resolve(args)));
}

function ask(socket, event, ...args) {
  return socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...args);
}

// emitWithAck resolves with the first argument of the ack only; this gets all of them.
function askAll(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(ACK_TIMEOUT_MS).emit(event, ...args, (error, ...answer) =>
      error ? reject(error) : resolve(answer));
  });
}

// The binary payloads both sides agree on (the Rust test builds the same bytes).
function blob() {
  return Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
}
const SMALL = Buffer.from([0xff, 0x00, 0x7f]);

function sameBytes(got, expected) {
  return got != null && Buffer.compare(Buffer.from(got), expected) === 0;
}

// The next line the test writes on our stdin.
function nextLine() {
  return new Promise((resolve) => {
    let buffered = "";
    const onData = (chunk) => {
      buffered += chunk;
      const end = buffered.indexOf("\n");
      if (end >= 0) {
        process.stdin.off("data", onData);
        process.stdin.pause();
        resolve(buffered.slice(0, end));
      }
    };
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", onData);
    process.stdin.resume();
  });
}

const scenarios = {
  // Connection-state recovery: the connection breaks under the socket, the test sends events
  // while it is away, and the socket reconnects when the test says so. With mode "forge" it
  // comes back with a pid that is not its own.
  async recovery() {
    const socket = io(url, options());
    const got = [];
    socket.on("n", (n) => got.push(n));
    await connected(socket);
    const first = socket.id;
    await ask(socket, "join");
    report("joined", { id: first, recovered: socket.recovered, got: [...got] });
    const gone = nextEvent(socket, "disconnect");
    socket.io.engine.close();
    await gone;
    report("disconnected");
    await nextLine();
    if (rooms === "forge") socket._pid = "not-my-pid";
    socket.connect();
    await connected(socket);
    report("reconnected", { id: socket.id, sameId: socket.id === first, recovered: socket.recovered, got: [...got] });
    await ask(socket, "again");
    report("live", { got: [...got] });
    socket.close();
    done();
  },

  // "/" and "/admin" through one Manager: one Engine.IO session carries both.
  async namespaces() {
    const root = io(url, options());
    const admin = io(`${url}/admin`, options());
    await Promise.all([connected(root), connected(admin)]);
    const answers = await Promise.all([ask(root, "whoami"), ask(admin, "whoami")]);
    const finished = nextEvent(root, "finish");
    report("ready", {
      namespaces: answers.map((answer) => answer.ns),
      same_manager: root.io === admin.io,
      engine_id: root.io.engine.id,
    });
    await finished;
    done();
  },

  // Which transport carries the session, seen from both ends.
  async transport() {
    const socket = io(url, options());
    await connected(socket);
    const engine = socket.io.engine;
    if (transport === "default" && engine.transport.name !== "websocket") {
      await new Promise((resolve) => engine.once("upgrade", resolve));
    }
    const finished = nextEvent(socket, "finish");
    const server = await ask(socket, "transport");
    report("transport", { client: engine.transport.name, server });
    await finished;
    done();
  },

  // An ack for an event we send, then an ack we give to the server's emit_with_ack.
  async acks() {
    const socket = io(url, options());
    socket.on("question", (data, callback) => {
      report("question", { data });
      callback({ answer: `${data.q}-pong` });
    });
    const verdict = nextEvent(socket, "verdict");
    await connected(socket);
    report("ack", { data: await ask(socket, "ask", { n: 21 }) });
    const [data] = await verdict;
    report("verdict", { data });
    done();
  },

  // Buffers up (one nested in an object), the same buffers back as an event and as an ack.
  async binary() {
    const socket = io(url, options());
    const echoed = nextEvent(socket, "binary-back");
    await connected(socket);
    const check = ([first, second]) => ({
      label: first?.label,
      blob_equal: sameBytes(first?.data, blob()),
      small_equal: sameBytes(second, SMALL),
    });
    const ack = await askAll(socket, "binary", { label: "blob", data: blob() }, SMALL);
    report("binary-ack", check(ack));
    report("binary-back", check(await echoed));
    done();
  },

  // Counts the "news" broadcasts that reach us until the server says "finish".
  async rooms() {
    const list = rooms ? rooms.split(",") : [];
    const socket = io(url, options({ auth: { rooms: list } }));
    const news = [];
    socket.on("news", (data) => news.push(data));
    const finished = nextEvent(socket, "finish");
    await connected(socket);
    report("connected", { rooms: list });
    await finished;
    report("finish", { news });
    done();
  },

  // The server removes us from "/" only: "/" sees "io server disconnect" and stays down,
  // "/admin" on the same connection keeps working.
  async kick() {
    const root = io(url, options());
    const admin = io(`${url}/admin`, options());
    await Promise.all([connected(root), connected(admin)]);
    const disconnected = nextEvent(root, "disconnect");
    root.emit("kick-me");
    const [reason] = await disconnected;
    report("disconnect", { ns: "/", reason, active: root.active });
    const answer = await ask(admin, "whoami");
    report("admin-alive", { ns: answer.ns, connected: admin.connected });
    done();
  },

  // Reconnects by itself when the server goes away and comes back on the same port.
  async reconnect() {
    const socket = io(url, options({
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 300,
      randomizationFactor: 0,
    }));
    socket.on("disconnect", (reason, details) =>
      report("disconnect", { reason, details: String(details?.description?.message ?? details?.description ?? "") }));
    socket.on("connect", async () => {
      const generation = await ask(socket, "generation");
      report("generation", { value: generation });
      if (generation >= 2) done();
    });
  },
};

if (!(scenario in scenarios)) fail(`unknown scenario ${scenario}`);
scenarios[scenario]().catch((error) => fail(error?.stack ?? String(error)));
