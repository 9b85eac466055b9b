// Chat users on the official Node.js Socket.IO client (npm socket.io-client 4.x) in one room while
// a fault hits the server (a worker killed, a reload), driven by bin/chatctl/tests/recovery.rs.
//
//   node recovering_room.mjs <base url> <receivers> <websocket|polling> <messages> [late]
//
// Every user logs in, connects /chat_infra and /chat_com on one connection of its own, and joins
// room "recovery"; then it prints {"event":"ready"}. On one line on stdin a sender says numbered
// messages to the room, one every 70 ms; after the 20th it prints {"event":"sending"} (the test
// strikes then). Once every receiver has had every number the server accepted (one any receiver
// got), or at the deadline, it prints {"event":"done",...}: per receiver which of those it lost
// or got twice, how many numbers never reached the server (said on a connection that died with
// its worker: a client's emit has no delivery guarantee without an ack), how many times the
// sockets disconnected and how many came back recovered (`socket.recovered`) or not, and the
// user_left announcements the receivers saw, and the user_entered ones of users who were in the
// room from the start that came after a message (one who came back recovered is no news). It
// exits 0; the test judges the counts.
//
// With [late] > 0 (an upgrade, driven by upgrade.rs): after "ready", a first line on stdin
// brings `late` more receivers and a second sender into the room (on whatever workers serve
// new connections then), reported by {"event":"late_ready"}; the next line starts both
// senders, the second saying n-1, n-2, ... as the first says m-1, m-2, ...

import readline from "node:readline";

import { connectUser, joinRoom, report, watchdog } from "./room_user.mjs";

const [base, receiversText, transport, messagesText, lateText = "0"] = process.argv.slice(2);
const receivers = Number(receiversText);
const messages = Number(messagesText);
const late = Number(lateText);
if (!/^http:\/\//.test(base || "") || !(receivers > 0) || !(messages > 20) || !(late >= 0)
    || !["websocket", "polling"].includes(transport)) {
  console.error("usage: node recovering_room.mjs http://HOST:PORT RECEIVERS websocket|polling MESSAGES (> 20) [LATE]");
  process.exit(2);
}

const ROOM = "recovery";
const INTERVAL_MS = 70;
// Well before the Rust side's deadline, so the test reads a report rather than a timeout.
const WATCHDOG_MS = 100_000;
// How long after the last message the receivers may take to catch up.
const SETTLE_MS = 30_000;

watchdog(WATCHDOG_MS, totals);

/** One user: a login, one connection, its /chat_infra and /chat_com sockets. */
class User {
  constructor(nickname) {
    this.nickname = nickname;
    this.got = new Map();
    this.disconnects = 0;
    this.recovered = 0;
    this.notRecovered = 0;
    this.userLeft = [];
    this.userEntered = [];
  }

  async start() {
    const watch = (socket) => {
      let first = true;
      socket.on("connect", () => {
        if (!first) {
          if (socket.recovered) this.recovered += 1;
          else this.notRecovered += 1;
        }
        first = false;
      });
      socket.on("disconnect", () => {
        this.disconnects += 1;
      });
    };
    // Both senders' lines count, by their text: m-1, n-1, ...
    const keyOf = (text) => (/^[mn]-\d+$/.test(text) ? text : null);
    await connectUser(base, this, [transport], { report, watch, onMessage: progress, keyOf });
    this.infra.on("user_entered", (data) => {
      const name = data && data.name;
      // After a message of the senders: an entry from before "ready" came before it.
      if (this.got.size > 0 && inRoomFromTheStart.has(name)) this.userEntered.push(name);
    });
    await joinRoom(this, ROOM);
  }

  /** The accepted numbers it never got, and those it got more than once. */
  losses(accepted) {
    const lost = [];
    const repeated = [];
    for (const n of accepted) {
      const times = this.got.get(n) || 0;
      if (times === 0) lost.push(n);
      if (times > 1) repeated.push(n);
    }
    return { lost, repeated };
  }
}

const sender = new User("sender");
const users = Array.from({ length: receivers }, (_, i) => new User(`recv${i}`));
const lateSender = late > 0 ? new User("late-sender") : null;
const inRoomFromTheStart = new Set([sender, ...users].map((user) => user.nickname));
let sent = 0;
let finished = false;

/** The numbers the server accepted: those at least one receiver got. */
function accepted() {
  const numbers = new Set();
  for (const user of users) for (const n of user.got.keys()) numbers.add(n);
  return [...numbers].sort();
}

function totals() {
  const sum = (key) => users.reduce((total, user) => total + user[key], 0);
  const numbers = accepted();
  const losses = users.map((user) => ({ user: user.nickname, ...user.losses(numbers) }));
  return {
    sent,
    receivers: users.length,
    never_arrived: sent * (lateSender ? 2 : 1) - numbers.length,
    lost: losses.reduce((n, l) => n + l.lost.length, 0),
    repeated: losses.reduce((n, l) => n + l.repeated.length, 0),
    examples: losses.filter((l) => l.lost.length || l.repeated.length).slice(0, 3),
    disconnects: sum("disconnects"),
    recovered: sum("recovered"),
    not_recovered: sum("notRecovered"),
    sender_disconnects: sender.disconnects,
    sender_recovered: sender.recovered,
    sender_not_recovered: sender.notRecovered + (lateSender ? lateSender.notRecovered : 0),
    user_left: users.flatMap((user) => user.userLeft),
    user_entered: users.flatMap((user) => user.userEntered),
  };
}

let lastSentAt = 0;

/** Done once the last number was said a while ago and every receiver has every accepted one. */
function progress() {
  if (finished || sent < messages || Date.now() - lastSentAt < 1000) return;
  const numbers = accepted();
  if (users.every((user) => user.losses(numbers).lost.length === 0)) finish();
}

function finish() {
  finished = true;
  report("done", totals());
  process.exit(0);
}

await Promise.all([sender, ...users].map((user) => user.start()));
report("ready");

const input = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => input.once("line", resolve));
await nextLine();
if (lateSender) {
  const newcomers = Array.from({ length: late }, (_, i) => new User(`late${i}`));
  await Promise.all([lateSender, ...newcomers].map((user) => user.start()));
  users.push(...newcomers);
  report("late_ready");
  await nextLine();
}
const timer = setInterval(() => {
  sent += 1;
  // Said while the sender's own connection is down, it is buffered by the client and sent
  // once it is back.
  sender.com.emit("message", JSON.stringify({ type: "userMessage", message: `m-${sent}` }));
  if (lateSender) {
    lateSender.com.emit("message", JSON.stringify({ type: "userMessage", message: `n-${sent}` }));
  }
  if (sent === 20) report("sending");
  if (sent === messages) {
    clearInterval(timer);
    lastSentAt = Date.now();
    setTimeout(finish, SETTLE_MS).unref();
    setInterval(progress, 100).unref();
  }
}, INTERVAL_MS);
