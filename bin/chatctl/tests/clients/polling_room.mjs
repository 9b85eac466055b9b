// A room of long-polling chat users on the official Node.js Socket.IO client (npm
// socket.io-client 4.x), driven by bin/chatctl/tests/proxy.rs through `chatctl proxy` in front of
// two hosts.
//
//   node polling_room.mjs <base url> <count> [polling|upgrade]
//
// `polling` (the default) keeps every user on long-polling; `upgrade` is the client's default,
// long-polling first, then websocket.
//
// Phase 1: every user logs in (POST /login sets the chat_session cookie), opens /chat_infra and
// /chat_com on one Engine.IO session over polling only (every request of a session is a separate
// HTTP request, so each must reach the host that owns the sid), joins "lobby" and says hello.
// Each user must hear every other user's hello exactly once (userMessage) and its own once
// (myMessage). Prints {"event":"ready","sids":[...]} and waits for one line on stdin: the
// sid tag of what the test has just stopped: two characters for a host (its node id), four for one
// worker of a host.
// Phase 2: every user whose sid carries that tag must lose its session and reconnect (through the
// proxy, to another host) with a sid that does not; users of other hosts must not be disturbed.
// Once all are back in the room, everyone speaks again and must hear every other user exactly
// once. Prints {"event":"done","sids":[...],"moved":N} and exits 0. Any failure or the watchdog
// prints {"event":"error",...} and exits 1.

import readline from "node:readline";

import { login } from "./login.mjs";
import { Manager } from "./socket_io_client.mjs";

const [base, countText, mode = "polling"] = process.argv.slice(2);
const count = Number(countText);
if (!/^http:\/\//.test(base || "") || !(count > 1) || !["polling", "upgrade"].includes(mode)) {
  console.error("usage: node polling_room.mjs http://HOST:PORT COUNT [polling|upgrade] (COUNT >= 2)");
  process.exit(2);
}

const ROOM = "lobby";
// The test never waits on a silent room: give up well before the Rust side's deadline.
const WATCHDOG_MS = 50_000;

function report(event, fields = {}) {
  // Writes to a pipe are synchronous in Node on Linux, so nothing is lost by process.exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(message) {
  report("error", { message, phase, users: users.map((user) => user.state()) });
  process.exit(1);
}

setTimeout(() => fail(`watchdog: stuck in phase ${phase}`), WATCHDOG_MS).unref();

/** One user: a login, then /chat_infra and /chat_com on one polling Engine.IO session. */
class User {
  constructor(index) {
    this.nickname = `poller${String(index).padStart(2, "0")}`;
    // Set by name_set, the answer to join_room; cleared when the session is lost, since a new
    // session must join again.
    this.joined = false;
    this.disconnects = 0;
    // Chat lines by round: round -> [{type, username}].
    this.heard = new Map();
  }

  async start() {
    const cookie = await login(base, this.nickname);
    this.manager = new Manager(base, {
      transports: mode === "polling" ? ["polling"] : ["polling", "websocket"],
      extraHeaders: { Cookie: cookie },
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
    });
    this.infra = this.manager.socket("/chat_infra");
    this.com = this.manager.socket("/chat_com");
    this.infra.on("connect", () => this.infra.emit("join_room", { name: ROOM }));
    this.infra.on("name_set", () => {
      this.joined = true;
      changed();
    });
    this.infra.on("disconnect", (reason) => {
      this.joined = false;
      this.disconnects += 1;
      // The client retries by itself unless the server or this program ended the socket.
      if (!this.infra.active) fail(`${this.nickname} was disconnected for good (${reason})`);
    });
    for (const socket of [this.infra, this.com]) {
      socket.on("connect", changed);
      socket.on("connect_error", (error) => {
        if (!socket.active) fail(`${this.nickname} was refused: ${error.message}`);
      });
      socket.on("error", (error) => fail(`${this.nickname} got an error event: ${JSON.stringify(error)}`));
    }
    this.com.on("message", (text) => {
      const line = JSON.parse(text);
      const round = /^round (\d+)$/.exec(line.message || "");
      if (!round || (line.type !== "userMessage" && line.type !== "myMessage")) return;
      const lines = this.heard.get(round[1]) || [];
      lines.push({ type: line.type, username: line.username });
      this.heard.set(round[1], lines);
      changed();
    });
  }

  sid() {
    return this.manager && this.manager.engine ? this.manager.engine.id : null;
  }

  inRoom() {
    return this.joined && this.infra.connected && this.com.connected;
  }

  /** Whether this user heard round `round` completely; fails on anything heard twice. */
  heardRound(round) {
    const lines = this.heard.get(String(round)) || [];
    const mine = lines.filter((line) => line.type === "myMessage").length;
    const theirs = new Set(lines.filter((line) => line.type === "userMessage").map((line) => line.username));
    if (mine > 1 || theirs.size !== lines.length - mine) {
      fail(`${this.nickname} heard a line of round ${round} twice: ${JSON.stringify(lines)}`);
    }
    return mine === 1 && theirs.size === count - 1 && !theirs.has(this.nickname);
  }

  state() {
    return { nickname: this.nickname, sid: this.sid(), joined: this.joined, disconnects: this.disconnects };
  }
}

const users = Array.from({ length: count }, (_, i) => new User(i));
let phase = "joining";
let stoppedTag = null;
let sidsBefore = [];

function speak(round) {
  for (const user of users) {
    user.com.emit("message", JSON.stringify({ type: "userMessage", message: `round ${round}` }));
  }
}

function changed() {
  if (phase === "joining" && users.every((user) => user.inRoom())) {
    phase = "round 1";
    speak(1);
  } else if (phase === "round 1" && users.every((user) => user.heardRound(1))) {
    phase = "waiting-for-stop";
    sidsBefore = users.map((user) => user.sid());
    report("ready", { sids: sidsBefore });
  } else if (phase === "rejoining") {
    const moved = (user, i) => sidsBefore[i].startsWith(stoppedTag);
    const back = users.every((user, i) => {
      const sid = user.sid();
      if (!moved(user, i) && (user.disconnects > 0 || sid !== sidsBefore[i])) {
        fail(`${user.nickname} of a host that kept running lost its session: ${JSON.stringify(user.state())}`);
      }
      return user.inRoom() && sid && !sid.startsWith(stoppedTag);
    });
    if (back) {
      phase = "round 2";
      speak(2);
    }
  } else if (phase === "round 2" && users.every((user) => user.heardRound(2))) {
    const moved = sidsBefore.filter((sid) => sid.startsWith(stoppedTag)).length;
    report("done", { sids: users.map((user) => user.sid()), moved });
    process.exit(0);
  }
}

const stdin = readline.createInterface({ input: process.stdin });
stdin.once("line", (line) => {
  stoppedTag = line.trim();
  // Two characters name a host (node id), four a worker of it (node id and worker id).
  if (phase !== "waiting-for-stop" || ![2, 4].includes(stoppedTag.length)) {
    fail(`told "${line}" in phase ${phase}`);
  }
  phase = "rejoining";
  changed();
});
// The test went away: do not linger.
stdin.once("close", () => {
  if (stoppedTag === null) fail("stdin closed before the stop was announced");
});

for (const user of users) {
  user.start().catch((error) => fail(`${user.nickname}: ${error.message}`));
}
