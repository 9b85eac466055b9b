// The Node.js reference stack for ops/bench/run.sh: the chat of crates/chat (same HTTP and
// Socket.IO surface, see crates/chat/src/{server.rs,events.rs}) the way Node users deploy it —
// socket.io 4 on node:cluster, one worker per WORKERS, @socket.io/sticky in the primary so that
// long-polling requests reach the worker holding their session, and @socket.io/redis-adapter
// (with the npm `redis` client) for broadcasts across workers. Sessions, room members and the
// room history live in Redis too, so every worker sees the same chat.
//
// Usage: node server.js --port 3000 --workers 2 --redis redis://127.0.0.1:6379 [--recovery]
//        (or PORT, WORKERS, REDIS_URL, NODE_CHAT_RECOVERY=1; SECRET signs the cookies, random when
//        unset)
// --recovery turns on socket.io's connectionStateRecovery (its defaults: a 2-minute window,
// middlewares skipped on a recovered socket), for ops/bench/run.sh's fault scenario; off by
// default, so that the other scenarios measure the stack as it is usually deployed. With
// @socket.io/redis-adapter, socket.io hands out a pid but the adapter neither adds offsets nor
// keeps sessions (it extends the base Adapter, not the session-aware one): what recovery gives
// here is what a Node user of this stack gets.
// Prints "node-chat listening on 127.0.0.1:PORT (N workers)" once every worker is ready.
//
// Differences from crates/chat, on purpose: no per-socket message rate limit (the benchmark
// measures throughput), no pages (only POST /login and GET /healthz).
'use strict';

const cluster = require('node:cluster');
const crypto = require('node:crypto');
const http = require('node:http');
const { parseArgs } = require('node:util');

const { values: flags } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    workers: { type: 'string' },
    redis: { type: 'string' },
    recovery: { type: 'boolean' },
  },
});
const PORT = Number(flags.port ?? process.env.PORT ?? 3000);
const HOST = flags.host ?? process.env.HOST ?? '127.0.0.1';
const WORKERS = Math.max(1, Number(flags.workers ?? process.env.WORKERS ?? 1));
const REDIS_URL = flags.redis ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const RECOVERY = flags.recovery ?? process.env.NODE_CHAT_RECOVERY === '1';

const COOKIE_NAME = 'chat_session';
const SESSION_TTL_S = 7 * 24 * 3600;
const HISTORY_LEN = 50;
const MAX_MESSAGE_CHARS = 2000;
// Every worker must verify the cookies the others signed: the primary picks the key once.
const SECRET = process.env.SECRET || (process.env.SECRET = crypto.randomBytes(32).toString('hex'));

if (cluster.isPrimary) {
  runPrimary();
} else {
  runWorker().catch((error) => {
    console.error(`node-chat worker ${process.pid}: ${error.stack || error}`);
    process.exit(1);
  });
}

function runPrimary() {
  const { setupMaster } = require('@socket.io/sticky');
  const server = http.createServer();
  // The primary accepts every connection and hands it to a worker: new ones to the worker with
  // the fewest connections, polling requests of an existing session to the worker that owns it.
  setupMaster(server, { loadBalancingMethod: 'least-connection' });
  let ready = 0;
  cluster.on('message', (_worker, message) => {
    if (message === 'node-chat:ready' && ++ready === WORKERS) {
      server.listen(PORT, HOST, () => {
        const recovery = RECOVERY ? ', connection-state recovery on' : '';
        console.log(`node-chat listening on ${HOST}:${PORT} (${WORKERS} workers, pid ${process.pid}${recovery})`);
      });
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    console.error(`node-chat: worker ${worker.process.pid} exited (${signal || code})`);
  });
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  // SIGUSR2: a rolling restart as PM2's `reload` does it for a cluster app (ops/bench/run.sh's
  // reload scenario): one worker at a time, start its replacement, wait until it is ready, then
  // stop the old one. A worker exits at once on SIGTERM, as an app without a shutdown handler does.
  let rolling = false;
  process.on('SIGUSR2', async () => {
    if (rolling) return;
    rolling = true;
    const began = Date.now();
    for (const old of Object.values(cluster.workers)) {
      const fresh = cluster.fork();
      await new Promise((resolve) => fresh.on('message', (m) => m === 'node-chat:ready' && resolve()));
      await new Promise((resolve) => {
        old.once('exit', resolve);
        old.process.kill('SIGTERM');
      });
    }
    rolling = false;
    console.log(`node-chat rolling restart done in ${Date.now() - began} ms`);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// --- the signed session cookie: `<session id>.<HMAC-SHA256 of it, base64url>` ----------------

function sign(value) {
  return `${value}.${crypto.createHmac('sha256', SECRET).update(value).digest('base64url')}`;
}

function unsign(signed) {
  const dot = signed.lastIndexOf('.');
  if (dot <= 0) return null;
  const value = signed.slice(0, dot);
  const expected = Buffer.from(sign(value));
  const given = Buffer.from(signed);
  return expected.length === given.length && crypto.timingSafeEqual(expected, given) ? value : null;
}

function cookieValue(header, name) {
  for (const part of (header || '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim());
  }
  return null;
}

// A nickname, room name or message: trimmed, bounded, no control characters (as crates/chat).
function boundedText(text, max) {
  if (typeof text !== 'string') return null;
  const trimmed = text.trim();
  // eslint-disable-next-line no-control-regex
  if (!trimmed || [...trimmed].length > max || /[\u0000-\u001f\u007f-\u009f]/.test(trimmed)) return null;
  return trimmed;
}

async function runWorker() {
  const { Server } = require('socket.io');
  const { setupWorker } = require('@socket.io/sticky');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const { createClient } = require('redis');

  const redis = createClient({ url: REDIS_URL });
  const subscriber = redis.duplicate();
  for (const client of [redis, subscriber]) {
    client.on('error', (error) => console.error(`node-chat worker ${process.pid}: redis: ${error.message}`));
  }
  await Promise.all([redis.connect(), subscriber.connect()]);

  const httpServer = http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/login') return login(req, res);
    if (req.method === 'GET' && req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      return res.end('ok');
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });

  async function login(req, res) {
    let body = '';
    for await (const chunk of req) {
      body += chunk;
      if (body.length > 4096) {
        res.writeHead(413);
        return res.end('form too large');
      }
    }
    const nickname = boundedText(new URLSearchParams(body).get('nickname'), 32);
    if (!nickname) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      return res.end('invalid nickname');
    }
    const id = crypto.randomBytes(16).toString('base64url');
    try {
      await redis.set(`session:${id}`, nickname, { EX: SESSION_TTL_S });
    } catch {
      res.writeHead(503, { 'content-type': 'text/plain' });
      return res.end('Sessions are unavailable, try again.');
    }
    res.writeHead(303, {
      // @socket.io/sticky hands a connection to a worker with its first chunk and forwards later
      // chunks as strings, which corrupts websocket frames when a client upgrades the connection
      // it logged in on: closing it after the login makes clients open a new one for Engine.IO
      // (browsers open a new connection for a websocket anyway).
      connection: 'close',
      location: '/rooms',
      'set-cookie': `${COOKIE_NAME}=${sign(id)}; Path=/; Max-Age=${SESSION_TTL_S}; HttpOnly; SameSite=Lax`,
    });
    res.end();
  }

  const io = new Server(httpServer, {
    maxHttpBufferSize: 1e6,
    ...(RECOVERY ? { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true } } : {}),
  });
  io.adapter(createAdapter(redis, subscriber));
  setupWorker(io);

  // Admits a namespace connection only with a valid signed cookie of a live session.
  async function authenticate(socket, next) {
    const signed = cookieValue(socket.handshake.headers.cookie, COOKIE_NAME);
    if (!signed) return next(new Error('No cookie transmitted.'));
    const id = unsign(signed);
    if (!id) return next(new Error('Invalid session'));
    let nickname;
    try {
      nickname = await redis.get(`session:${id}`);
    } catch {
      return next(new Error('Session store unavailable, try again'));
    }
    if (!nickname) return next(new Error('Invalid session'));
    socket.data.nickname = nickname;
    next();
  }

  const infra = io.of('/chat_infra');
  const com = io.of('/chat_com');
  infra.use(authenticate);
  com.use(authenticate);

  const roomKey = (room) => `room:${room}`;
  const chatRooms = (socket) =>
    [...socket.rooms].filter((r) => r.startsWith('room:')).map((r) => r.slice('room:'.length));
  // The same client's socket in the other namespace: both ride one Engine.IO connection, whose
  // Client object keeps its namespace sockets by name (socket.io 4 keeps the map in `nsps`).
  const sibling = (socket, nsp) => socket.client?.nsps?.get(nsp);

  infra.on('connection', (socket) => {
    const nickname = socket.data.nickname;

    socket.on('join_room', async (payload) => {
      const room = boundedText(payload?.name, 64);
      if (!room) return socket.emit('error', { message: 'join_room expects {"name": ROOM}' });
      socket.join(roomKey(room));
      sibling(socket, '/chat_com')?.join(roomKey(room));
      let newUser = false;
      try {
        newUser = (await redis.hIncrBy(`members:${room}`, nickname, 1)) === 1;
      } catch (error) {
        console.error(`node-chat: cannot record room membership: ${error.message}`);
      }
      socket.emit('name_set', { name: nickname });
      const history = await redis.lRange(`history:${room}`, 0, -1).catch(() => []);
      socket.emit('history', history.reverse());
      socket.emit('message', JSON.stringify({ type: 'serverMessage', message: `Welcome to ${room}!` }));
      if (newUser) socket.to(roomKey(room)).emit('user_entered', { name: nickname });
      await sendUsersList(room, (users) => infra.to(roomKey(room)).emit('users_list', users));
    });

    socket.on('leave_room', async (payload) => {
      if (typeof payload?.name === 'string' && socket.rooms.has(roomKey(payload.name))) {
        await leaveRoom(socket, payload.name);
      }
    });

    // `disconnecting`: the socket is still in its rooms.
    socket.on('disconnecting', async () => {
      for (const room of chatRooms(socket)) await leaveRoom(socket, room);
    });
  });

  async function sendUsersList(room, emit) {
    const users = await redis.hKeys(`members:${room}`).catch(() => []);
    emit(users);
  }

  async function leaveRoom(socket, room) {
    const nickname = socket.data.nickname;
    let gone = false;
    try {
      const left = await redis.hIncrBy(`members:${room}`, nickname, -1);
      if (left <= 0) {
        await redis.hDel(`members:${room}`, nickname);
        gone = true;
      }
    } catch (error) {
      console.error(`node-chat: cannot record leaving a room: ${error.message}`);
    }
    if (gone) socket.to(roomKey(room)).emit('user_left', { name: nickname });
    await sendUsersList(room, (users) => socket.to(roomKey(room)).emit('users_list', users));
    socket.leave(roomKey(room));
    sibling(socket, '/chat_com')?.leave(roomKey(room));
  }

  com.on('connection', (socket) => {
    const nickname = socket.data.nickname;
    // The client may join a room on /chat_infra before /chat_com connects: catch up.
    const infraSocket = sibling(socket, '/chat_infra');
    if (infraSocket) for (const room of chatRooms(infraSocket)) socket.join(roomKey(room));

    socket.on('message', async (text) => {
      let incoming;
      try {
        incoming = typeof text === 'string' ? JSON.parse(text) : null;
      } catch {
        incoming = null;
      }
      const message = incoming?.type === 'userMessage' ? incoming.message : null;
      if (typeof message !== 'string' || !message.trim() || [...message].length > MAX_MESSAGE_CHARS) {
        return socket.emit('error', { message: 'message expects a JSON string {"type":"userMessage","message":TEXT}' });
      }
      const rooms = chatRooms(socket);
      if (rooms.length === 0) return socket.emit('error', { message: 'join a room before sending messages' });
      const theirs = JSON.stringify({ type: 'userMessage', username: nickname, message });
      for (const room of rooms) {
        socket.to(roomKey(room)).emit('message', theirs);
        redis
          .multi()
          .lPush(`history:${room}`, theirs)
          .lTrim(`history:${room}`, 0, HISTORY_LEN - 1)
          .exec()
          .catch((error) => console.error(`node-chat: cannot record history: ${error.message}`));
      }
      socket.emit('message', JSON.stringify({ type: 'myMessage', username: nickname, message }));
    });
  });

  process.on('SIGTERM', () => process.exit(0));
  process.send('node-chat:ready');
}
