// The book's own client, Socket.IO 0.9 (npm socket.io-client@0.9.16, installed by ops/js as
// "socket.io-client-0.9"), in a chat room with a user of today's client (npm socket.io-client
// 4.x) and a python-socketio user (legacy_room_user.py, run with the given python), driven by
// bin/chatctl/tests/legacy.rs against the workers of one chatctl app.
//
//   node legacy_room.mjs <base url> websocket|xhr-polling <python with python-socketio>
//
// Phase 0: a 0.9 handshake without the login cookie is refused ("handshake unauthorized").
// Phase 1: ann (0.9, on the given transport), bob (4.x, websocket) and carl (python) log in,
// open /chat_infra and /chat_com and join "lobby", as the book's chapter 4 page does. bob and
// carl hear user_entered for ann, ann gets a users_list with all three; each says hello, and
// each hears the others' hellos exactly once (userMessage) and its own once (myMessage). Prints {"event":"ready",
// "legacy_sid":...,"v4_sid":...,"connects":N} (N: ann's connections so far, 1 unless a request
// of her session reached a process that does not know it) and waits for a line on stdin:
// `end` (prints {"event":"done"} and exits 0), or `killed`: the test killed ann's worker.
// Phase 2: ann's client reconnects by itself (0.9 reconnection, a new handshake), rejoins, and
// all talk again, exactly once each way. Prints {"event":"done"} and exits 0. Any failure or
// the watchdog prints {"event":"error",...} and exits 1.

import { spawn } from "node:child_process";
import http from "node:http";
import { createRequire } from "node:module";
import readline from "node:readline";

import { login } from "./login.mjs";

const require = createRequire(new URL("../../../../ops/js/package.json", import.meta.url));
let io09;
let Manager;
try {
  io09 = require("socket.io-client-0.9");
  ({ Manager } = require("socket.io-client"));
} catch (error) {
  console.error(`the npm clients are not installed in ops/js/node_modules (${error.message}): run ops/test-deps.sh`);
  process.exit(3);
}

const [base, transport, python] = process.argv.slice(2);
if (!/^http:\/\//.test(base || "") || !["websocket", "xhr-polling"].includes(transport) || !python) {
  console.error("usage: node legacy_room.mjs http://HOST:PORT websocket|xhr-polling PYTHON");
  process.exit(2);
}

const ROOM = "lobby";
const WATCHDOG_MS = 50_000;
let phase = "refusal";

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(message) {
  report("error", { message, phase, heard: users.map((user) => [user.name, user.heard]) });
  process.exit(1);
}

setTimeout(() => fail(`watchdog: stuck in phase ${phase}`), WATCHDOG_MS).unref();

// A browser sends the login cookie with the 0.9 handshake and transport requests by itself;
// in Node the 0.9 client (xmlhttprequest, ws 0.4) cannot set it, so it is added here, on its
// requests only.
let legacyCookie = null;
const originalRequest = http.request;
http.request = function (options, ...rest) {
  if (legacyCookie && options && typeof options === "object" && !(options instanceof URL)
      && String(options.path || "").startsWith("/socket.io/1/")) {
    options.headers = { ...(options.headers || {}), Cookie: legacyCookie };
  }
  return originalRequest.call(this, options, ...rest);
};

/** Resolves when `condition()` holds; checked on every event a user hears. */
const waiters = [];
function until(what, condition) {
  return new Promise((resolve) => {
    const waiter = () => condition() && (resolve(), true);
    if (!waiter()) waiters.push(waiter);
  }).catch((error) => fail(`${what}: ${error}`));
}
function heard() {
  for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]()) waiters.splice(i, 1);
}

function newUser(name) {
  return { name, heard: { messages: [], entered: [], left: [], users: [], lists: 0, gone: 0 } };
}

/** What `user` heard. `users` is the room's member list as a client keeps it: the whole list
 * on joining (and none while disconnected), then who entered and who left. */
function record(user, kind, value) {
  if (kind === "users") {
    user.heard.users = value;
    user.heard.lists += 1;
  } else if (kind === "gone") {
    user.heard.gone += 1;
  } else {
    user.heard[kind] = [...user.heard[kind], value];
    const others = user.heard.users.filter((name) => name !== value);
    if (kind === "entered") user.heard.users = [...others, value];
    if (kind === "left") user.heard.users = others;
  }
  heard();
}

function count(user, type, text) {
  return user.heard.messages.filter((m) => m.type === type && m.message === text).length;
}

/** `speaker` says `text`; waits until everyone heard it, then checks each heard it exactly once
 * (the others as userMessage, the speaker as myMessage). */
async function say(speaker, text) {
  const heardBy = (said) => users.every((user) =>
    count(user, user === speaker ? "myMessage" : "userMessage", said) >= 1);
  speaker.say(JSON.stringify({ type: "userMessage", message: text }));
  await until(`"${text}" heard by all`, () => heardBy(text));
  // A marker said after it arrives after it: by then a duplicate would have arrived too.
  const marker = `${text} (end)`;
  speaker.say(JSON.stringify({ type: "userMessage", message: marker }));
  await until(`"${marker}" heard by all`, () => heardBy(marker));
  for (const user of users) {
    const type = user === speaker ? "myMessage" : "userMessage";
    if (count(user, type, text) !== 1) {
      fail(`${user.name} heard "${text}" ${count(user, type, text)} times`);
    }
  }
}

/** Everyone says something, in turn. */
async function everyoneSpeaks(round) {
  for (const user of users) await say(user, `${round} from ${user.name}`);
}

/** carl, the python-socketio user: a child process that reports what it hears. */
function startPythonUser(name) {
  const user = newUser(name);
  const script = new URL("./legacy_room_user.py", import.meta.url).pathname;
  const child = spawn(python, [script, base, name], { stdio: ["pipe", "pipe", "inherit"] });
  child.on("exit", (code) => phase !== "done" && fail(`the python user exited with ${code}`));
  readline.createInterface({ input: child.stdout }).on("line", (line) => {
    let report;
    try {
      report = JSON.parse(line);
    } catch {
      return;
    }
    if (report.kind === "error") fail(`python user: ${report.value}`);
    else record(user, report.kind, report.value);
  });
  user.say = (text) => child.stdin.write(text + "\n");
  user.stop = () => child.kill();
  return user;
}

function refusedWithoutCookie() {
  return new Promise((resolve) => {
    const socket = io09.connect(base + "/chat_com", {
      transports: [transport], "force new connection": true, reconnect: false,
    });
    socket.on("error", (reason) => {
      if (reason === "handshake unauthorized") resolve();
      else fail(`a handshake without cookie failed with ${JSON.stringify(reason)}`);
    });
    socket.on("connect", () => fail("a handshake without cookie was accepted"));
  });
}

const users = [];

(async () => {
  await refusedWithoutCookie();
  phase = "login";
  const ann = newUser("ann");
  const bob = newUser("bob");
  legacyCookie = await login(base, ann.name);
  const bobCookie = await login(base, bob.name);

  phase = "bob joins";
  const manager = new Manager(base, { transports: ["websocket"], extraHeaders: { Cookie: bobCookie } });
  const bobInfra = manager.socket("/chat_infra");
  const bobCom = manager.socket("/chat_com");
  bobInfra.on("connect", () => bobInfra.emit("join_room", { name: ROOM }));
  bobInfra.on("user_entered", (data) => record(bob, "entered", data.name));
  bobInfra.on("user_left", (data) => record(bob, "left", data.name));
  bobInfra.on("users_list", (names) => record(bob, "users", names));
  bobInfra.on("disconnect", () => record(bob, "gone", true));
  bobCom.on("message", (text) => record(bob, "messages", JSON.parse(text)));
  bob.say = (text) => bobCom.emit("message", text);
  users.push(bob);
  await until("bob in the room", () => bob.heard.users.includes("bob"));

  phase = "carl joins";
  const carl = startPythonUser("carl");
  users.push(carl);
  await until("carl in the room", () => carl.heard.users.includes("carl"));

  phase = "ann joins";
  // The book's chapter 4 client code, on the 0.9 client.
  const options = { transports: [transport], "reconnection delay": 200 };
  const chatInfra = io09.connect(base + "/chat_infra", options);
  const chatCom = io09.connect(base + "/chat_com", options);
  let annConnects = 0;
  chatInfra.on("connect", () => {
    annConnects += 1;
    chatInfra.emit("join_room", { name: ROOM });
  });
  chatInfra.on("users_list", (names) => record(ann, "users", names));
  chatInfra.on("user_entered", (data) => record(ann, "entered", data.name));
  chatInfra.on("user_left", (data) => record(ann, "left", data.name));
  chatInfra.on("disconnect", () => record(ann, "gone", true));
  chatCom.on("message", (text) => record(ann, "messages", JSON.parse(text)));
  ann.say = (text) => chatCom.send(text);
  users.push(ann);
  const everyone = () => users.every((user) => ann.heard.users.includes(user.name));
  await until("ann sees all three in the room", everyone);
  await until("bob and carl hear ann enter", () =>
    bob.heard.entered.includes("ann") && carl.heard.entered.includes("ann"));

  phase = "talk";
  await everyoneSpeaks("hello");
  report("ready", {
    legacy_sid: chatInfra.socket.sessionid,
    v4_sid: manager.engine.id,
    connects: annConnects,
  });

  // Counted before the kill: a user who loses the connection from now on has rejoined once it
  // got a member list after this (each join sends the joiner one), in whatever order its
  // client reports the loss and the rejoin.
  const counted = users.map((user) => ({ gone: user.heard.gone, lists: user.heard.lists }));
  const rejoined = () => users.every((user, i) =>
    user.heard.gone === counted[i].gone || user.heard.lists > counted[i].lists);
  const lines = readline.createInterface({ input: process.stdin });
  const told = await new Promise((resolve) => lines.once("line", resolve));
  if (told.trim() === "end") {
    phase = "done";
    carl.stop();
    report("done", { legacy_sid: chatInfra.socket.sessionid, connects: annConnects });
    process.exit(0);
  }
  phase = "reconnect";
  // The killed worker may have held bob's or carl's connection too: the talk waits until
  // every user who lost the connection has rejoined and every user lists all three.
  const before = chatInfra.socket.sessionid;
  await until("ann reconnected and rejoined", () =>
    annConnects >= 2 && chatInfra.socket.sessionid !== before && chatInfra.socket.connected);
  await until("everyone back in the room with everyone", () => rejoined() &&
    users.every((user) => users.every((other) => user.heard.users.includes(other.name))));
  phase = "talk again";
  await everyoneSpeaks("again");
  phase = "done";
  carl.stop();
  report("done", { legacy_sid: chatInfra.socket.sessionid, connects: annConnects });
  process.exit(0);
})().catch((error) => fail(String(error && error.stack || error)));
