// The real Socket.IO 0.9 client from npm (socket.io-client@0.9.16, installed by ops/js as
// "socket.io-client-0.9") against the 0.9 endpoint of tests/endpoint.rs. One JSON line per
// scenario; exit 0 only if all passed.
//
//   node crates/legacy/tests/js/client09.cjs http://127.0.0.1:PORT websocket|xhr-polling

const path = require("node:path");
const io = require(path.join(__dirname, "../../../../ops/js/node_modules/socket.io-client-0.9"));

const [base, transport] = process.argv.slice(2);
if (!/^http:\/\//.test(base || "") || !["websocket", "xhr-polling"].includes(transport)) {
  console.error("usage: node client09.cjs http://HOST:PORT websocket|xhr-polling");
  process.exit(2);
}

/** Generous: loopback round trips on a machine that may be busy running other tests. */
const DEADLINE_MS = 20_000;

function within(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function next(emitter, event) {
  return within(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), event);
}

// Heartbeats the client answers, counted where the 0.9 transport handles them.
let heartbeats = 0;
const onHeartbeat = io.Transport.prototype.onHeartbeat;
io.Transport.prototype.onHeartbeat = function (...args) {
  heartbeats += 1;
  return onHeartbeat.apply(this, args);
};

function connect(nsp) {
  return io.connect(base + nsp, {
    transports: [transport],
    "force new connection": true,
    reconnect: false,
  });
}

const scenarios = {
  async events_with_acks_both_ways() {
    const socket = connect("/echo");
    await next(socket, "connect");
    const [echoed] = await within(
      new Promise((resolve) => socket.emit("echo", { a: 1, text: "é😀" }, (...args) => resolve(args))),
      "the ack of echo",
    );
    if (JSON.stringify(echoed) !== JSON.stringify({ a: 1, text: "é😀" })) {
      throw new Error(`ack carried ${JSON.stringify(echoed)}`);
    }
    // The server asks us, with an ack, and reports what we answered.
    socket.on("question", (n, answer) => answer(n + 1));
    socket.emit("ask-me", 41);
    const [answered] = await next(socket, "answered");
    if (answered !== 42) throw new Error(`the server saw the answer ${answered}`);
    socket.disconnect();
  },

  async send_and_json_send_reach_message_handlers() {
    const socket = connect("/echo");
    await next(socket, "connect");
    const text = next(socket, "message");
    socket.send("hello: 0.9");
    const [got] = await text;
    if (got !== "hello: 0.9") throw new Error(`message was ${JSON.stringify(got)}`);
    const json = next(socket, "message");
    socket.json.send({ x: [1, 2] });
    const [value] = await json;
    if (JSON.stringify(value) !== '{"x":[1,2]}') throw new Error(`json was ${JSON.stringify(value)}`);
    socket.disconnect();
  },

  async heartbeats_keep_an_idle_session() {
    const socket = connect("/echo");
    await next(socket, "connect");
    let dropped = false;
    socket.on("disconnect", () => (dropped = true));
    // Both sides time out after one second of silence (tests/endpoint.rs); six heartbeats
    // at 200 ms span more than that, so only heartbeats kept the session.
    const start = heartbeats;
    await within(
      new Promise((resolve) => {
        const check = setInterval(() => {
          if (heartbeats - start >= 6 || dropped) clearInterval(check), resolve();
        }, 20);
      }),
      "six heartbeats",
    );
    if (dropped) throw new Error("the session dropped while idle");
    const [echoed] = await within(
      new Promise((resolve) => socket.emit("echo", "still here", (...args) => resolve(args))),
      "an echo after the idle time",
    );
    if (echoed !== "still here") throw new Error(`echo was ${echoed}`);
    socket.disconnect();
  },

  async the_server_disconnects_a_namespace() {
    const socket = connect("/echo");
    await next(socket, "connect");
    const gone = next(socket, "disconnect");
    socket.emit("kick-me");
    await gone;
  },
};

(async () => {
  let failed = 0;
  for (const [name, run] of Object.entries(scenarios)) {
    try {
      await within(run(), name);
      console.log(JSON.stringify({ scenario: name, transport, ok: true }));
    } catch (error) {
      failed += 1;
      console.log(JSON.stringify({ scenario: name, transport, ok: false, error: String(error) }));
    }
  }
  process.exit(failed ? 1 : 0);
})();
