// What the room clients in this directory (recovering_room.mjs, handoff_room.mjs) do alike with
// one chat user on the official Socket.IO client: a login, one connection carrying /chat_infra
// and /chat_com, numbered room messages counted, and the user in its room.

import { login } from "./login.mjs";
import { Manager } from "./socket_io_client.mjs";

/** One report line for the test on stdout. */
export function report(event, fields = {}) {
  // Writes to a pipe are synchronous in Node on Linux, so nothing is lost by process.exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

/** Reports an error with `totals()` and exits 1 if the scenario is not over after `ms`. */
export function watchdog(ms, totals) {
  setTimeout(() => {
    report("error", { message: "watchdog: the scenario did not finish in time", ...totals() });
    process.exit(1);
  }, ms).unref();
}

/**
 * Logs `user.nickname` in and connects its two namespaces on one connection over `transports`
 * (user.infra, user.com). Counts in `user.got` each room message `keyOf` gives a key (by
 * default `m-N`, by N), calling `onMessage` after each, and in `user.userLeft` the user_left
 * announcements. `watch(socket)` is called for each socket before it connects. A refusal for
 * good reports an error and exits.
 */
export async function connectUser(base, user, transports, { report, watch, onMessage, keyOf = numberOf }) {
  const cookie = await login(base, user.nickname);
  const manager = new Manager(base, {
    transports,
    extraHeaders: { Cookie: cookie },
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
  });
  user.infra = manager.socket("/chat_infra");
  user.com = manager.socket("/chat_com");
  for (const socket of [user.infra, user.com]) {
    watch(socket);
    socket.on("connect_error", (error) => {
      if (!socket.active) {
        report("error", { message: `${user.nickname} was refused: ${error.message}` });
        process.exit(1);
      }
    });
  }
  user.com.on("message", (line) => {
    const parsed = JSON.parse(line);
    const key = parsed.type === "userMessage" ? keyOf(parsed.message || "") : null;
    if (key !== null) {
      user.got.set(key, (user.got.get(key) || 0) + 1);
      if (onMessage) onMessage();
    }
  });
  user.infra.on("user_left", (data) => user.userLeft.push(data && data.name));
}

/** The N of a message `m-N`, else null. */
function numberOf(text) {
  const match = /^m-(\d+)$/.exec(text);
  return match ? Number(match[1]) : null;
}

/** Joins `room` on the user's /chat_infra and waits until both its namespaces are connected. */
export async function joinRoom(user, room) {
  if (!user.infra.connected) await new Promise((resolve) => user.infra.once("connect", resolve));
  user.infra.emit("join_room", { name: room });
  await new Promise((resolve) => user.infra.once("name_set", resolve));
  if (!user.com.connected) await new Promise((resolve) => user.com.once("connect", resolve));
}
