// Users chatting for as long as a test watches them, on the official Node.js Socket.IO client
// (npm socket.io-client 4.x): the load of bin/chatctl/tests/metrics.rs and admin_browser.rs.
//
//   node chatter.mjs <base url> <users> <interval ms>
//
// Each user logs in, connects /chat_infra and /chat_com with the session cookie (every other
// user on websocket only, the rest starting with long-polling), joins the room "metrics" and
// says a line every <interval> ms while connected; a user whose worker dies is reconnected by
// the client and joins again. Once every user has joined it prints {"event":"chatting"}; it
// exits 0 when stdin ends or gets a line. If not everyone joined by its deadline it prints
// {"event":"error",...} and exits 1.

import readline from "node:readline";

import { login } from "./login.mjs";
import { Manager } from "./socket_io_client.mjs";

const [base, usersText, intervalText] = process.argv.slice(2);
const users = Number(usersText);
const interval = Number(intervalText);
if (!/^http:\/\//.test(base || "") || !(users > 0) || !(interval >= 50)) {
  console.error("usage: node chatter.mjs http://HOST:PORT USERS INTERVAL_MS (at least 50)");
  process.exit(2);
}

const JOIN_DEADLINE_MS = 45_000;

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

let joined = 0;
let said = 0;
let heard = 0;
const deadline = setTimeout(() => {
  report("error", { message: `only ${joined} of ${users} users joined in time` });
  process.exit(1);
}, JOIN_DEADLINE_MS);

async function user(index) {
  const cookie = await login(base, `chatter${index}`);
  const transports = index % 2 === 0 ? ["websocket"] : ["polling", "websocket"];
  // One connection per user carrying both namespaces, as a page has: with io() per namespace
  // the client reuses a cached connection for the first user only, and the others' two
  // namespaces may land on two workers (a /chat_com socket there is in no room).
  const manager = new Manager(base, { transports, extraHeaders: { Cookie: cookie } });
  const infra = manager.socket("/chat_infra");
  const com = manager.socket("/chat_com");
  let first = true;
  infra.on("connect", () => infra.emit("join_room", { name: "metrics" }));
  infra.on("name_set", () => {
    if (first) {
      first = false;
      joined += 1;
      if (joined === users) {
        clearTimeout(deadline);
        report("chatting", { users });
      }
    }
  });
  com.on("message", () => {
    heard += 1;
  });
  setInterval(() => {
    if (com.connected && !first) {
      said += 1;
      com.emit("message", JSON.stringify({ type: "userMessage", message: `line ${said}` }));
    }
  }, interval);
}

for (let index = 0; index < users; index += 1) {
  user(index).catch((error) => {
    report("error", { message: `login of chatter${index}: ${error.message}` });
    process.exit(1);
  });
}

const input = readline.createInterface({ input: process.stdin });
const finish = () => {
  report("done", { said, heard });
  process.exit(0);
};
input.once("line", finish);
input.once("close", finish);
