// One chat user on the official Node.js Socket.IO client (npm socket.io-client 4.x), driven by
// bin/chatctl/tests/dropped_messages.rs: a line that cannot reach the other workers must earn
// its sender an `error` event.
//
//   node lost_line.mjs <base url>
//
// The user logs in, connects /chat_infra and /chat_com with the session cookie, joins the room
// "lobby" and prints {"event":"ready"}. Then it waits for one line on stdin (the test's "Redis
// is gone") and says a line every 200 ms (well below the rate limit) until the server answers
// one with an `error` event about the other workers; it prints {"event":"told","message":...}
// and exits 0. On its deadline it prints {"event":"error",...} and exits 1.

import { createRequire } from "node:module";
import readline from "node:readline";

import { login } from "./login.mjs";

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

const [base] = process.argv.slice(2);
if (!/^http:\/\//.test(base || "")) {
  console.error("usage: node lost_line.mjs http://HOST:PORT");
  process.exit(2);
}

// Give up well before the Rust side's deadline.
const WATCHDOG_MS = 45_000;

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

const errors = [];
function fail(message) {
  report("error", { message, errors });
  process.exit(1);
}

setTimeout(() => fail("watchdog: the sender was never told of a lost line"), WATCHDOG_MS).unref();

const cookie = await login(base, "ann");
const options = { transports: ["websocket"], extraHeaders: { Cookie: cookie } };
const infra = io(`${base}/chat_infra`, options);
const com = io(`${base}/chat_com`, options);
for (const socket of [infra, com]) {
  socket.on("connect_error", (error) => fail(`connect_error: ${error.message}`));
}

com.on("error", (data) => {
  const message = (data && data.message) || "";
  errors.push(message);
  if (message.includes("other servers")) {
    report("told", { message });
    process.exit(0);
  }
});

await new Promise((resolve) => infra.on("connect", resolve));
infra.emit("join_room", { name: "lobby" });
await new Promise((resolve) => infra.once("name_set", resolve));
if (!com.connected) {
  await new Promise((resolve) => com.on("connect", resolve));
}
report("ready");

const input = readline.createInterface({ input: process.stdin });
input.once("line", () => {
  let n = 0;
  setInterval(() => {
    n += 1;
    com.emit("message", JSON.stringify({ type: "userMessage", message: `while-down-${n}` }));
  }, 200);
});
