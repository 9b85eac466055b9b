// A crowd of real chat users on the official Node.js Socket.IO client (npm socket.io-client 4.x),
// driven by bin/chatctl/tests/reload.rs across a `chatctl reload`.
//
//   node crowd.mjs <base url> <count>
//
// Each user logs in (POST /login, which sets the chat_session cookie) and connects /chat_infra
// over websocket with that cookie. Once all are connected it prints {"event":"connected"}; then it
// waits for one line on stdin (the test's "the reload is over"), waits until every user is
// connected (a user the reload disconnected comes back to a new worker, with the cookie of its
// only login: sessions live in the master's shared store), prints {"event":"done",...} with the
// counts (connects and disconnects: the test judges them) and exits 0. On a refusal, a disconnect for good or its deadline it prints {"event":"error",...}
// and exits 1.

import readline from "node:readline";

import { login } from "./login.mjs";
import { io } from "./socket_io_client.mjs";

const [base, countText] = process.argv.slice(2);
const count = Number(countText);
if (!/^http:\/\//.test(base || "") || !(count > 0)) {
  console.error("usage: node crowd.mjs http://HOST:PORT COUNT");
  process.exit(2);
}

// The test never waits on a silent crowd: give up well before the Rust side's deadline.
const WATCHDOG_MS = 45_000;

function report(event, fields = {}) {
  // Writes to a pipe are synchronous in Node on Linux, so nothing is lost by process.exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(message) {
  report("error", { message, ...totals() });
  process.exit(1);
}

setTimeout(() => fail("watchdog: not every user got connected in time"), WATCHDOG_MS).unref();

/** One user: a login, then a socket on /chat_infra that the client reconnects by itself. */
class User {
  constructor(index) {
    this.nickname = `crowd${index}`;
    this.connected = false;
    this.connects = 0;
    this.disconnects = 0;
  }

  async start() {
    const cookie = await login(base, this.nickname);
    const socket = io(`${base}/chat_infra`, {
      transports: ["websocket"],
      // One Engine.IO connection per user, as with separate browsers.
      forceNew: true,
      extraHeaders: { Cookie: cookie },
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
    });
    socket.on("connect", () => {
      this.connected = true;
      this.connects += 1;
      changed();
    });
    socket.on("disconnect", (reason) => {
      this.connected = false;
      this.disconnects += 1;
      reasons[reason] = (reasons[reason] || 0) + 1;
      // A draining worker must let clients go as a lost connection ("transport close"), which
      // the client retries; a disconnect the server asks for would leave this user offline.
      if (!socket.active) fail(`${this.nickname} was disconnected for good (${reason})`);
      changed();
    });
    socket.on("connect_error", (error) => {
      // While the socket is active the client retries by itself (a worker going away). An
      // inactive one was refused by the namespace middleware: the session cookie from before
      // the reload was not accepted by the new workers.
      if (!socket.active) fail(`${this.nickname} was refused: ${error.message}`);
    });
  }
}

const users = Array.from({ length: count }, (_, i) => new User(i));
const reasons = {};
let phase = "connecting";

function totals() {
  const sum = (key) => users.reduce((total, user) => total + user[key], 0);
  return {
    users: count,
    connected: users.filter((user) => user.connected).length,
    connects: sum("connects"),
    disconnects: sum("disconnects"),
    disconnect_reasons: reasons,
  };
}

function changed() {
  const everyoneConnected = users.every((user) => user.connected);
  if (phase === "connecting" && everyoneConnected) {
    phase = "waiting-for-reload";
    report("connected", totals());
  } else if (phase === "reloaded" && everyoneConnected) {
    report("done", totals());
    process.exit(0);
  }
}

const stdin = readline.createInterface({ input: process.stdin });
stdin.once("line", () => {
  phase = "reloaded";
  changed();
});
// The test went away: do not linger.
stdin.once("close", () => {
  if (phase !== "reloaded") fail("stdin closed before the reload was announced");
});

for (const user of users) {
  user.start().catch((error) => fail(`${user.nickname}: ${error.message}`));
}
