// The PM2 side of ops/bench/supervisor.sh: the smallest HTTP app that answers like the chat's
// `GET /healthz` ("ok", 200), run by PM2 in cluster mode (`pm2 start hello.js -i 2`).
//
// Each answer names the process that gave it (`x-worker-pid`), so the benchmark can tell when a
// replacement worker serves.
//
// It shuts down the way PM2's documentation asks of an app that wants graceful reloads: on
// SIGINT it stops accepting and lets requests in flight finish before exiting, so the reload
// figure measures PM2, not a careless app. PM2 kills it anyway after its kill_timeout.
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || '127.0.0.1';

/** Set on SIGINT: answers then say `Connection: close`, so keep-alive clients move on. */
let closing = false;

const server = http.createServer((req, res) => {
  if (closing) {
    res.setHeader('connection', 'close');
  }
  if (req.method === 'GET' && (req.url === '/' || req.url === '/healthz')) {
    res.writeHead(200, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': 2,
      'x-worker-pid': process.pid,
    });
    res.end('ok');
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
  res.end('not found');
});

server.listen(port, host);

process.on('SIGINT', () => {
  closing = true;
  // Since Node 19, close() also closes the idle keep-alive connections; the busy ones close
  // after their answer (see `closing`).
  server.close(() => process.exit(0));
});
