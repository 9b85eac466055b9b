// One chat user on the official Node.js Socket.IO client (npm socket.io-client 4.x), driven by
// bin/chatctl/tests/dropped_messages.rs, that sends lines the other workers cannot all get.
//
//   node sender.mjs <base url> until-told     (a line that cannot reach the other workers must
//                                              earn its sender an `error` event)
//   node sender.mjs <base url> flood COUNT     (a storm of lines for a worker that does not read)
//
// The user logs in, connects /chat_infra and /chat_com with the session cookie, joins the room
// "lobby" and prints {"event":"ready"}. Then it waits for one line on stdin (the test's "the
// way to the other workers is broken") and:
// - until-told: says a line every 200 ms (well below the rate limit) until the server answers
//   one with an `error` event about the other workers; it prints {"event":"told","message":...}
//   and exits 0;
// - flood: says COUNT lines, a thousand at a time, as fast as the server answers them, then
//   prints {"event":"sent"}; on a second line on stdin it says a line every 200 ms until a
//   third, then prints {"event":"said"} and exits 0.
// On its deadline it prints {"event":"error",...} and exits 1.

import readline from "node:readline";

import { login } from "./login.mjs";
import { io } from "./socket_io_client.mjs";

const [base, mode, countText] = process.argv.slice(2);
const count = Number(countText);
if (!/^http:\/\//.test(base || "") || !(mode === "until-told" || (mode === "flood" && count > 0))) {
  console.error("usage: node sender.mjs http://HOST:PORT until-told|flood COUNT");
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

setTimeout(() => fail(`watchdog: ${mode} did not finish in time`), WATCHDOG_MS).unref();

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

function say(text) {
  com.emit("message", JSON.stringify({ type: "userMessage", message: text }));
}

function untilTold() {
  let n = 0;
  setInterval(() => {
    n += 1;
    say(`while-down-${n}`);
  }, 200);
}

// Lines said before waiting for the server's `myMessage` of the last of them: the server closes
// a client that lets more than max_buffered_packets (4096) of its packets pile up.
const CHUNK = 1000;

function flood() {
  let said = 0;
  const sayChunk = () => {
    const end = Math.min(said + CHUNK, count);
    for (said += 1; said <= end; said += 1) {
      say(`flood-${said}`);
    }
    said = end;
  };
  com.on("message", (line) => {
    const parsed = JSON.parse(line);
    if (parsed.type !== "myMessage" || parsed.message !== `flood-${said}`) {
      return;
    }
    if (said === count) {
      report("sent");
      input.once("line", () => {
        let n = 0;
        setInterval(() => say(`after-the-flood-${++n}`), 200);
        input.once("line", () => {
          report("said", { lines: n });
          process.exit(0);
        });
      });
      return;
    }
    sayChunk();
  });
  sayChunk();
}

const input = readline.createInterface({ input: process.stdin });
input.once("line", () => (mode === "flood" ? flood() : untilTold()));
