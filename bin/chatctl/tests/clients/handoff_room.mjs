// Chat users on the official Node.js Socket.IO client (npm socket.io-client 4.x) in several rooms
// while the server's workers are replaced under them (live hand-off on reload), driven by
// bin/chatctl/tests/handoff.rs.
//
//   node handoff_room.mjs <base url> <users> <rooms>
//
// User i is in room "handoff-<i mod rooms>" and connects /chat_infra and /chat_com on one
// connection of its own, on websocket only, long-polling only, or polling upgraded to websocket
// (i mod 3). Once all are in, it prints {"event":"ready"}. On "go" on stdin, one sender per room
// says numbered messages to its room, each asking for an acknowledgement, one every 100 ms per
// room; after 20 per room it prints {"event":"sending"}, and again 20 later after each "more".
// On "stop" the senders stop; once every ack came back and every receiver has every number its room's sender said, or
// at the deadline, it prints {"event":"done",...}: acks asked and answered, numbers lost or
// repeated per receiver, every `disconnect` and reconnect of any socket, and user_left
// announcements. It exits 0; the test judges the counts.

import readline from "node:readline";

import { connectUser, joinRoom, report, watchdog } from "./room_user.mjs";

const [base, usersText, roomsText] = process.argv.slice(2);
const userCount = Number(usersText);
const roomCount = Number(roomsText);
if (!/^http:\/\//.test(base || "") || !(userCount > 0) || !(roomCount > 0)) {
  console.error("usage: node handoff_room.mjs http://HOST:PORT USERS ROOMS");
  process.exit(2);
}

const INTERVAL_MS = 100;
const ACK_TIMEOUT_MS = 60_000;
const WATCHDOG_MS = 540_000;
// How long after the senders stop the receivers and acks may take to catch up.
const SETTLE_MS = 30_000;
const KINDS = [["websocket"], ["polling"], ["polling", "websocket"]];

watchdog(WATCHDOG_MS, totals);

class User {
  constructor(nickname, room, transports) {
    this.nickname = nickname;
    this.room = room;
    this.transports = transports;
    this.got = new Map();
    this.disconnects = 0;
    this.reconnects = 0;
    this.userLeft = [];
    this.sent = 0;
    this.acked = 0;
    this.ackFailures = 0;
    this.askedDuringReload = 0;
    this.ackedDuringReload = 0;
  }

  async start() {
    const watch = (socket) => {
      let first = true;
      socket.on("connect", () => {
        if (!first) this.reconnects += 1;
        first = false;
      });
      socket.on("disconnect", (reason, details) => {
        this.disconnects += 1;
        if (!this.firstDisconnect) {
          const why = details && (details.description || details.message);
          const status = details && details.context && details.context.status;
          this.firstDisconnect = `${socket.nsp}: ${reason} (${why || ""} ${status || ""})`;
        }
      });
    };
    await connectUser(base, this, this.transports, { report, watch });
    await joinRoom(this, this.room);
  }

  /** Says the next number to its room, and counts the ack (apart for those asked while the
   * test reloads: in flight across a hand-off). */
  say() {
    this.sent += 1;
    const line = JSON.stringify({ type: "userMessage", message: `m-${this.sent}` });
    const duringReload = reloading;
    if (duringReload) this.askedDuringReload += 1;
    this.com.timeout(ACK_TIMEOUT_MS).emit("message", line, (error) => {
      if (error) this.ackFailures += 1;
      else {
        this.acked += 1;
        if (duringReload) this.ackedDuringReload += 1;
      }
    });
  }
}

const rooms = Array.from({ length: roomCount }, (_, r) => `handoff-${r}`);
const senders = rooms.map((room, r) => new User(`send${r}`, room, KINDS[r % KINDS.length]));
const users = Array.from(
  { length: userCount },
  (_, i) => new User(`user${i}`, rooms[i % roomCount], KINDS[i % KINDS.length]),
);
const everyone = [...senders, ...users];

function losses(user) {
  const sender = senders[rooms.indexOf(user.room)];
  const lost = [];
  const repeated = [];
  for (let n = 1; n <= sender.sent; n += 1) {
    const times = user.got.get(n) || 0;
    if (times === 0) lost.push(n);
    if (times > 1) repeated.push(n);
  }
  return { lost, repeated };
}

function totals() {
  const sum = (list, key) => list.reduce((total, user) => total + user[key], 0);
  const each = users.map((user) => ({ user: user.nickname, ...losses(user) }));
  return {
    users: userCount,
    sent: sum(senders, "sent"),
    acked: sum(senders, "acked"),
    ack_failures: sum(senders, "ackFailures"),
    asked_during_reloads: sum(senders, "askedDuringReload"),
    acked_during_reloads: sum(senders, "ackedDuringReload"),
    lost: each.reduce((n, l) => n + l.lost.length, 0),
    repeated: each.reduce((n, l) => n + l.repeated.length, 0),
    examples: each.filter((l) => l.lost.length || l.repeated.length).slice(0, 3)
      .map((l) => ({ user: l.user, lost: l.lost.slice(0, 10), repeated: l.repeated.slice(0, 10) })),
    disconnects: sum(everyone, "disconnects"),
    reconnects: sum(everyone, "reconnects"),
    first_disconnects: everyone.filter((u) => u.firstDisconnect).slice(0, 5)
      .map((u) => `${u.nickname} (${u.transports.join("+")}) ${u.firstDisconnect}`),
    user_left: everyone.flatMap((user) => user.userLeft),
  };
}

function settled() {
  return senders.every((s) => s.acked + s.ackFailures === s.sent)
    && users.every((user) => losses(user).lost.length === 0);
}

// Logins a few at a time: the server's login budget and handshake caps stay out of the way.
for (let at = 0; at < everyone.length; at += 20) {
  await Promise.all(everyone.slice(at, at + 20).map((user) => user.start()));
}
report("ready");

const input = readline.createInterface({ input: process.stdin });
// Between "reloading" and "more": the test runs `chatctl reload`.
let reloading = false;
let timer;
// The number of messages per room after which "sending" is said next.
let nextMark = 20;
input.on("line", (line) => {
  if (line === "go") {
    timer = setInterval(() => {
      for (const sender of senders) sender.say();
      if (senders[0].sent === nextMark) report("sending", { sent: nextMark });
    }, INTERVAL_MS);
  } else if (line === "reloading") {
    reloading = true;
  } else if (line === "more") {
    // Said after a reload: "sending" again once 20 more went out (the stream goes on).
    reloading = false;
    nextMark = senders[0].sent + 20;
  } else if (line === "stop") {
    clearInterval(timer);
    const stopped = Date.now();
    const check = setInterval(() => {
      if (settled() || Date.now() - stopped > SETTLE_MS) {
        clearInterval(check);
        report("done", totals());
        process.exit(0);
      }
    }, 100);
  }
});
