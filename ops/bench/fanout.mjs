// Load client of ops/bench/fanout.sh: chat users in one room, on the official Node.js Socket.IO
// client (npm socket.io-client 4.x, websocket transport), measuring how a room broadcast fans out
// across chatctl's workers.
//
//   node fanout.mjs clients --url http://127.0.0.1:PORT --room R --tag T --first I --count N
//                           --total TOTAL --go FILE --out FILE [--sender] [--senders 1]
//                           [--rate 20] [--duration 10] [--ramp 100] [--grace 5]
//   node fanout.mjs summary RESULT.json...
//
// `clients`: logs in N users (POST /login, which sets the chat_session cookie), each with one
// Engine.IO connection carrying both namespaces, /chat_infra and /chat_com; connects them RAMP at
// a time and joins them to room R. Each join sends the joiner the room's users_list and the
// others user_entered; after each batch it waits until no member change has arrived for half a
// second (when every join sent the whole list to every member, that backlog grew past the 45 s
// ping timeout unpaced). It prints {"event":"ready"} once every one of its users has
// joined and has seen the room's member list reach TOTAL (every process of the run is then in the
// room), and waits for the file GO to exist: it holds the start time (ms since the epoch). From
// then on:
//   - with --sender (N = SENDERS): the users send `message` RATE times a second together, for
//     DURATION seconds, taking turns so the stream is evenly spaced; each message carries its
//     sender, its sequence number and its send time (performance.timeOrigin + performance.now(),
//     the same clock in every process of the machine). The chat allows one socket 20 messages a
//     second (serve --messages-per-second): a higher RATE needs RATE / 20 senders;
//   - otherwise every user records, for each of those messages it receives, the end-to-end
//     latency (receive time minus send time) and which message arrived.
// A receiving process stops when each of its users has every message, or GRACE seconds after
// the last send was due. It writes its counts to OUT and its latencies (float64, ms) to
// OUT.lat, prints {"event":"done"} and exits.
//
// `summary`: merges the results of one run's processes into one JSON line: sent, delivered,
// lost, duplicates, delivered msg/s, latency p50/p99/max.

import { createRequire } from "node:module";
import http from "node:http";
import fs from "node:fs";

// ESM ignores NODE_PATH: resolve the client from the workspace's ops/js (ops/test-deps.sh
// installs it there).
const require = createRequire(new URL("../js/package.json", import.meta.url));

const [command, ...rest] = process.argv.slice(2);

function parseFlags(words) {
  const flags = { _: [] };
  for (let i = 0; i < words.length; i++) {
    const word = words[i];
    if (!word.startsWith("--")) flags._.push(word);
    else if (word === "--sender") flags.sender = true;
    else flags[word.slice(2)] = words[++i];
  }
  return flags;
}

function report(event, fields = {}) {
  // Writes to a file or pipe are synchronous in Node on Linux: nothing is lost by process.exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(message) {
  report("error", { message });
  process.exit(1);
}

const now = () => performance.timeOrigin + performance.now();

if (command === "summary") summary(rest);
else if (command === "clients") await clients(parseFlags(rest));
else {
  console.error("usage: node fanout.mjs clients --url URL ... | summary RESULT.json...");
  process.exit(2);
}

/** POST /login on a connection of its own; resolves with the `chat_session=...` cookie pair. */
function login(base, nickname) {
  const body = new URLSearchParams({ nickname }).toString();
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${base}/login`,
      {
        method: "POST",
        agent: false,
        headers: {
          "Content-Type": "application/x-www-form-urlencoded",
          "Content-Length": Buffer.byteLength(body),
        },
      },
      (response) => {
        response.resume();
        const cookie = (response.headers["set-cookie"] || [])
          .map((header) => header.split(";")[0])
          .find((pair) => pair.startsWith("chat_session="));
        if ((response.statusCode === 302 || response.statusCode === 303) && cookie) resolve(cookie);
        else reject(new Error(`POST /login answered ${response.statusCode} without a session cookie`));
      },
    );
    request.on("error", (error) => reject(new Error(`POST /login failed: ${error.message}`)));
    request.end(body);
  });
}

async function clients(flags) {
  let Manager;
  try {
    ({ Manager } = require("socket.io-client"));
  } catch (error) {
    fail(`socket.io-client is not installed in ops/js/node_modules (${error.message}): run ops/test-deps.sh`);
  }
  const base = flags.url;
  const room = flags.room;
  const first = Number(flags.first ?? 0);
  const count = Number(flags.count);
  const total = Number(flags.total);
  const rate = Number(flags.rate ?? 20);
  const durationS = Number(flags.duration ?? 10);
  const ramp = Number(flags.ramp ?? 100);
  const graceMs = Number(flags.grace ?? 5) * 1000;
  const sender = Boolean(flags.sender);
  const senders = Number(flags.senders ?? 1);
  if (!/^http:\/\//.test(base || "") || !room || !flags.tag || !(count > 0) || !(total >= count)
    || !(rate > 0) || !(senders >= 1) || (sender && count !== senders) || !(durationS > 0) || !(ramp > 0) || !flags.go || !flags.out) {
    fail("clients needs --url http://HOST:PORT --room R --tag T --count N --total N --go FILE --out FILE");
  }
  // Per sender; sender k sends its i-th message at start + (i * senders + k) / rate seconds.
  const messages = Math.round((rate * durationS) / senders);
  const senderPrefix = `${flags.tag}s`;
  // Every process of a run must be in the room before the go file appears; a run that cannot
  // get there ends instead of hanging.
  setTimeout(() => fail(`not all ${count} users were in the room after 240 s`), 240_000).unref();

  const users = [];
  const latencies = new Float64Array(sender ? 0 : count * messages * senders);
  let delivered = 0;
  let duplicates = 0;
  let lastDelivery = 0;
  let serverErrors = 0;
  let measuring = false;
  let finished = null;
  let lastListAt = 0;

  class User {
    constructor(index) {
      this.nickname = sender ? `${senderPrefix}${index}` : `${flags.tag}${index}`;
      // Which messages arrived: a second copy is a duplicate, not a delivery.
      this.seen = new Uint8Array(sender ? 0 : messages * senders);
      this.received = 0;
      this.biggestList = 0;
    }

    async start() {
      const cookie = await login(base, this.nickname);
      // One Manager per user: one Engine.IO connection, as one browser, carrying both namespaces
      // (the server joins the /chat_com socket of the same connection to the room).
      const manager = new Manager(base, {
        transports: ["websocket"],
        extraHeaders: { Cookie: cookie },
        reconnection: false,
      });
      this.infra = manager.socket("/chat_infra");
      this.com = manager.socket("/chat_com");
      const connected = (socket) =>
        new Promise((resolve, reject) => {
          socket.once("connect", resolve);
          socket.once("connect_error", (error) => reject(new Error(`${socket.nsp}: ${error.message}`)));
        });
      await Promise.all([connected(this.infra), connected(this.com)]);
      for (const socket of [this.infra, this.com]) {
        socket.on("disconnect", (reason) => {
          if (!finished) fail(`${this.nickname} disconnected on ${socket.nsp}: ${reason}`);
        });
      }
      this.com.on("error", () => {
        serverErrors += 1;
      });
      this.com.on("message", (text) => this.onMessage(text));
      // The member list: the whole list on joining, then who enters and who leaves.
      const members = new Set();
      this.roomFull = new Promise((resolve) => {
        const changed = () => {
          lastListAt = now();
          this.biggestList = Math.max(this.biggestList, members.size);
          if (this.biggestList >= total) resolve();
        };
        this.infra.on("users_list", (list) => {
          for (const name of Array.isArray(list) ? list : []) members.add(name);
          changed();
        });
        this.infra.on("user_entered", (data) => {
          members.add(data && data.name);
          changed();
        });
        this.infra.on("user_left", (data) => {
          members.delete(data && data.name);
          changed();
        });
      });
      const joined = new Promise((resolve) => this.infra.once("name_set", resolve));
      this.infra.emit("join_room", { name: room });
      await joined;
    }

    onMessage(text) {
      if (!measuring || sender) return;
      const arrived = now();
      let line;
      try {
        line = JSON.parse(text);
      } catch {
        return;
      }
      if (line.type !== "userMessage" || !line.username.startsWith(senderPrefix)) return;
      const [from, seqText, sentText] = line.message.split(" ");
      const seq = Number(from) * messages + Number(seqText);
      const sentAt = Number(sentText);
      if (!(seq >= 0 && seq < messages * senders)) return;
      if (this.seen[seq]) {
        duplicates += 1;
        return;
      }
      this.seen[seq] = 1;
      this.received += 1;
      latencies[delivered] = arrived - sentAt;
      delivered += 1;
      lastDelivery = arrived;
      if (delivered === count * messages * senders) finish();
    }
  }

  const started = now();
  for (let i = 0; i < count; i += ramp) {
    const batch = [];
    for (let j = i; j < Math.min(count, i + ramp); j++) {
      const user = new User(first + j);
      users.push(user);
      batch.push(user.start().catch((error) => fail(`${user.nickname}: ${error.message}`)));
    }
    await Promise.all(batch);
    await quiet(() => lastListAt, 500, 60_000);
  }
  const joinedMs = now() - started;
  await Promise.all(users.map((user) => user.roomFull));
  report("ready", { users: count, join_ms: Math.round(joinedMs), room_full_ms: Math.round(now() - started) });

  const startAt = await waitForGo(flags.go);
  measuring = true;
  const cpuBefore = process.cpuUsage();
  const lastDue = startAt + (messages * senders - 1) * (1000 / rate);
  let sent = 0;
  let lateSends = 0;

  function finish() {
    if (finished) return;
    finished = now();
    const cpu = process.cpuUsage(cpuBefore);
    const result = {
      sender,
      senders,
      users: count,
      rate,
      duration_s: durationS,
      messages,
      sent,
      late_sends: lateSends,
      server_errors: serverErrors,
      delivered,
      duplicates,
      start_at: startAt,
      last_delivery: lastDelivery,
      finished_at: finished,
      cpu_ms: (cpu.user + cpu.system) / 1000,
      ready_users_min_list: Math.min(...users.map((user) => user.biggestList)),
    };
    fs.writeFileSync(flags.out, JSON.stringify(result));
    fs.writeFileSync(`${flags.out}.lat`, Buffer.from(latencies.buffer, 0, delivered * 8));
    report("done", { sent, delivered, duplicates });
    process.exit(0);
  }

  if (sender) {
    // The whole stream in one sequence: message n is sender n % senders's (n / senders)-th.
    const total = messages * senders;
    const due = (n) => startAt + n * (1000 / rate);
    const sendDue = () => {
      const t = now();
      // Catch up with every message whose time has come: the rate holds even when the event
      // loop wakes late (counted in late_sends, a sign that the sending process is busy).
      while (sent < total && due(sent) <= t) {
        if (t - due(sent) > 1000 / rate) lateSends += 1;
        const from = sent % senders;
        const seq = Math.floor(sent / senders);
        const text = `${from} ${seq} ${now().toFixed(3)}`;
        users[from].com.emit("message", JSON.stringify({ type: "userMessage", message: text }));
        sent += 1;
      }
      if (sent < total) setTimeout(sendDue, Math.max(0, due(sent) - now()));
      // Stay a little for `error` events (rate limit) about the last messages.
      else setTimeout(finish, 1000);
    };
    setTimeout(sendDue, Math.max(0, startAt - now()));
  } else {
    setTimeout(finish, Math.max(0, lastDue + graceMs - now()));
  }
}

/** Resolves once `lastEventAt()` is `quietMs` old, or after `limitMs`. */
function quiet(lastEventAt, quietMs, limitMs) {
  const giveUpAt = now() + limitMs;
  return new Promise((resolve) => {
    const poll = () => {
      if (now() - lastEventAt() >= quietMs || now() >= giveUpAt) resolve();
      else setTimeout(poll, 50);
    };
    poll();
  });
}

/** Polls for the go file; resolves with the start time it holds (ms since the epoch). */
function waitForGo(path) {
  return new Promise((resolve) => {
    const poll = () => {
      let text = null;
      try {
        text = fs.readFileSync(path, "utf8");
      } catch {
        // Not there yet.
      }
      const startAt = Number(text);
      if (text && startAt > 0) resolve(startAt);
      else setTimeout(poll, 20);
    };
    poll();
  });
}

function summary(files) {
  if (files.length === 0) {
    console.error("usage: node fanout.mjs summary RESULT.json...");
    process.exit(2);
  }
  const results = files.map((file) => JSON.parse(fs.readFileSync(file, "utf8")));
  const senders = results.filter((result) => result.sender);
  const receivers = results.filter((result) => !result.sender);
  if (senders.length !== 1) fail(`expected one sender's result, got ${senders.length}`);
  const [send] = senders;
  const receiverCount = receivers.reduce((n, result) => n + result.users, 0);
  const delivered = receivers.reduce((n, result) => n + result.delivered, 0);
  const duplicates = receivers.reduce((n, result) => n + result.duplicates, 0);
  const parts = files
    .filter((_, i) => !results[i].sender)
    .map((file) => {
      const bytes = fs.readFileSync(`${file}.lat`);
      return new Float64Array(bytes.buffer, bytes.byteOffset, bytes.length / 8);
    });
  const all = new Float64Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  all.sort();
  const quantile = (q) => (all.length ? all[Math.min(all.length - 1, Math.floor(q * all.length))] : null);
  const lastDelivery = Math.max(...receivers.map((result) => result.last_delivery));
  const spanS = (lastDelivery - send.start_at) / 1000;
  const expected = send.sent * receiverCount;
  const round = (x, digits = 2) => (x === null ? null : Number(x.toFixed(digits)));
  process.stdout.write(
    JSON.stringify({
      rate: send.rate,
      senders: send.senders,
      duration_s: send.duration_s,
      sent: send.sent,
      late_sends: send.late_sends,
      rate_limited: send.server_errors,
      receivers: receiverCount,
      expected,
      delivered,
      lost: expected - delivered,
      duplicates,
      delivered_per_s: spanS > 0 ? Math.round(delivered / spanS) : null,
      p50_ms: round(quantile(0.5)),
      p99_ms: round(quantile(0.99)),
      max_ms: round(all.length ? all[all.length - 1] : null),
      client_cpu_ms: results.map((result) => Math.round(result.cpu_ms)),
    }) + "\n",
  );
}
