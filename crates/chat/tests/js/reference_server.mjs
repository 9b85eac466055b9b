// The Node.js reference server (npm socket.io) with the events client_test.mjs expects; the
// same events as the in-process server of crates/chat/tests/js_client.rs, so that our browser
// client is checked against both.
//
//   node crates/chat/tests/js/reference_server.mjs     # prints {"port":N,"recovery_port":M};
//                                                       # exits when stdin closes

import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { createServer } from "node:http";

// ESM ignores NODE_PATH: resolve npm packages from ops/js, where ops/test-deps.sh installs them.
const opsJs = new URL("../../../../ops/js/", import.meta.url);
if (!existsSync(new URL("node_modules/socket.io", opsJs))) {
  console.error(`socket.io is not installed in ${opsJs.pathname}node_modules: run ops/test-deps.sh`);
  process.exit(2);
}
const { Server } = createRequire(new URL("package.json", opsJs))("socket.io");

const httpServer = createServer();
// Frequent pings, so that the heartbeat scenario sees many quickly; a pong timeout generous
// enough for a busy machine.
const io = new Server(httpServer, { pingInterval: 250, pingTimeout: 2500, maxHttpBufferSize: 1e6 });

function register(socket) {
  // Answers an ack with the event's own arguments (binary included).
  socket.on("echo", (...args) => {
    const ack = args.pop();
    if (typeof ack === "function") ack(...args);
  });
  // Sends the event's arguments back as a server event.
  socket.on("echo-event", (...args) => socket.emit("echo-event", ...args));
  // Asks the client a question with an ack and reports the answer.
  socket.on("request-ack", async (n) => {
    try {
      const answer = await socket.timeout(5000).emitWithAck("question", n);
      socket.emit("answer-received", answer);
    } catch (err) {
      socket.emit("answer-received", { error: err.message });
    }
  });
  socket.on("transport", (ack) => ack(socket.conn.transport.name));
  socket.on("whoami", (ack) =>
    ack({ nsp: socket.nsp.name, tag: socket.handshake.query.tag ?? null, auth: socket.handshake.auth }),
  );
  socket.on("close-me", () => socket.conn.close());
  socket.on("disconnect-me", () => socket.disconnect());
}

io.of("/").on("connection", register);
io.of("/admin").on("connection", register);
io.of("/private").use((_socket, next) => {
  const err = new Error("not authorized");
  err.data = { code: 42 };
  next(err);
});

// A second server with connection-state recovery (the option is a server's, not a
// namespace's): "join-room" puts the socket in a room, "to-room" sends that room `n`.
const recoveryHttp = createServer();
const recovering = new Server(recoveryHttp, {
  pingInterval: 250,
  pingTimeout: 2500,
  connectionStateRecovery: { maxDisconnectionDuration: 60_000 },
});
recovering.on("connection", (socket) => {
  socket.on("join-room", (room, ack) => {
    socket.join(room);
    ack();
  });
  socket.on("to-room", (room, n, ack) => {
    recovering.to(room).emit("n", n);
    ack();
  });
  socket.on("close-me", () => socket.conn.close());
});

let listening = 0;
const ready = () => {
  if (++listening < 2) return;
  console.log(
    JSON.stringify({ port: httpServer.address().port, recovery_port: recoveryHttp.address().port }),
  );
};
httpServer.listen(0, "127.0.0.1", ready);
recoveryHttp.listen(0, "127.0.0.1", ready);
process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
