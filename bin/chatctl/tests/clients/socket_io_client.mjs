// The official Node.js Socket.IO client (npm socket.io-client 4.x) for the test clients in this
// directory. ESM ignores NODE_PATH: it is resolved from the workspace's ops/js, where
// ops/test-deps.sh installs it; without it the program exits 3 with the fix.

import { createRequire } from "node:module";

const require = createRequire(new URL("../../../../ops/js/package.json", import.meta.url));

function load() {
  try {
    return require("socket.io-client");
  } catch (error) {
    console.error(`socket.io-client is not installed in ops/js/node_modules (${error.message}): run ops/test-deps.sh`);
    process.exit(3);
  }
}

export const { io, Manager } = load();
