// The chat login of the test clients in this directory.

import http from "node:http";

/**
 * POST /login of `nickname` on a connection of its own (the clients measure Socket.IO; the
 * tests' own HTTP loops measure keep-alive); resolves with the `chat_session=...` cookie pair.
 * `localAddress` picks the client's source address (ops/attack: a user on 127.0.0.2 while
 * 127.0.0.1 floods).
 */
export function login(base, nickname, { localAddress } = {}) {
  const body = new URLSearchParams({ nickname }).toString();
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${base}/login`,
      {
        method: "POST",
        agent: false,
        localAddress,
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
        if ((response.statusCode === 302 || response.statusCode === 303) && cookie) {
          resolve(cookie);
        } else {
          reject(new Error(`POST /login answered ${response.statusCode} without a session cookie`));
        }
      },
    );
    request.on("error", (error) => reject(new Error(`POST /login failed: ${error.message}`)));
    request.end(body);
  });
}
