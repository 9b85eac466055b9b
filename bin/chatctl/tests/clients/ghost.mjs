// The ghost-member sequence on the official Node.js Socket.IO client (npm socket.io-client 4.x),
// driven by bin/chatctl/tests/presence.rs against the workers of a chatctl master.
//
//   node ghost.mjs <base url> <rooms>
//
// Ann logs in and joins room0. Old logs in, joins room0 … room<rooms-1>, renames itself to "new"
// with set_name and disconnects. Ann must hear `user_left {name: "old"}` (the name she saw
// enter), and the room list must come back to {room0: 1}: no ghost of Old anywhere. Prints
// {"event":"done","left":...,"rooms":...} and exits 0, or {"event":"error",...} and exits 1.

import { login } from "./login.mjs";
import { io } from "./socket_io_client.mjs";

const [base, roomsText] = process.argv.slice(2);
const rooms = Number(roomsText);
if (!/^http:\/\//.test(base || "") || !(rooms > 0)) {
  console.error("usage: node ghost.mjs http://HOST:PORT ROOMS");
  process.exit(2);
}

// Give up well before the Rust side's deadline.
const WATCHDOG_MS = 30_000;

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(message) {
  report("error", { message });
  process.exit(1);
}

setTimeout(() => fail("watchdog: the sequence did not finish in time"), WATCHDOG_MS).unref();

/** A logged-in user's socket on /chat_infra, over websocket, on an Engine.IO session of its own. */
async function connect(nickname) {
  const cookie = await login(base, nickname);
  const socket = io(`${base}/chat_infra`, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    extraHeaders: { Cookie: cookie },
  });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (error) => reject(new Error(`${nickname}: ${error.message}`)));
  });
  return socket;
}

/** The next `event` on `socket`. */
function next(socket, event) {
  return new Promise((resolve) => socket.once(event, resolve));
}

async function join(socket, room) {
  const named = next(socket, "name_set");
  socket.emit("join_room", { name: room });
  await named;
}

async function main() {
  const ann = await connect("ann");
  await join(ann, "room0");
  const old = await connect("old");
  for (let i = 0; i < rooms; i += 1) {
    await join(old, `room${i}`);
  }
  const renamed = next(old, "name_set");
  old.emit("set_name", { name: "new" });
  const name = await renamed;
  if (name.name !== "new") fail(`set_name answered ${JSON.stringify(name)}`);

  const left = next(ann, "user_left");
  old.disconnect();
  const leftName = (await left).name;

  // The room list, until no room but Ann's is left (the store answers after the leaves).
  let list;
  for (;;) {
    const answer = next(ann, "rooms_list");
    ann.emit("get_rooms");
    list = await answer;
    if (JSON.stringify(list) === JSON.stringify({ room0: 1 })) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  report("done", { left: leftName, rooms: list });
  ann.disconnect();
  process.exit(0);
}

main().catch((error) => fail(error.message));
