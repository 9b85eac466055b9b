// The book's chapter 4 chat room page (tests/js/book/) in chromium, next to a user on our own
// chat room page, all in one room of a live chat server:
//
// - ann runs the book's page on the book's own client: the npm Socket.IO 0.9 bundle
//   (ops/js/node_modules/socket.io-client-0.9/dist/socket.io.js, installed by the npm step),
//   which speaks 0.9 to /socket.io/1/.
// - cid runs the same page, unchanged, on the client we serve at /socket.io/socket.io.js
//   (io.connect, socket.send, on('message')), which speaks v4.
// - bob uses our /chatroom page.
// Each logs in through the landing page (the cookie authorizes the 0.9 handshake too). The book
// pages are served on the chat's own origin by the browser driver (page routes), as the book's
// Express app served them next to Socket.IO. Everyone sees the others enter, and every message
// reaches the two others. Prints one line per step; exits 1 at the first failed step.
//
//   node crates/chat/tests/js/book_chapter4.mjs http://127.0.0.1:3000

import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";

const base = (process.argv[2] || "").replace(/\/$/, "");
if (!/^https?:\/\//.test(base)) {
  console.error("usage: node book_chapter4.mjs http://HOST:PORT");
  process.exit(2);
}
const opsJs = new URL("../../../../ops/js/", import.meta.url);
const bundle09 = new URL("node_modules/socket.io-client-0.9/dist/socket.io.js", opsJs);
for (const needed of [new URL("node_modules/playwright-core", opsJs), bundle09]) {
  if (!existsSync(needed)) {
    console.error(`${needed.pathname} is missing: run ops/test-deps.sh (npm ci in ops/js)`);
    process.exit(2);
  }
}
const { chromium } = createRequire(new URL("package.json", opsJs))("playwright-core");
const executablePath = process.env.CHATCTL_CHROMIUM || "/usr/bin/chromium";

/** Every wait: loopback round trips, but the machine may be busy building and running tests,
 * and the 0.9 client tries its transports in turn, each with a 10 s connect timeout, before it
 * settles on one (a fresh-clone run once saw no join within 30 s). */
const WAIT_MS = 90_000;
const ROOM = "lobby";
const bookPage = readFileSync(new URL("book/chatroom.html", import.meta.url), "utf8");
const bookScript = readFileSync(new URL("book/chatroom.js", import.meta.url), "utf8");
const pageErrors = [];

let browser;
let failed = false;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60_000,
  });
  await run();
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.message}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);

async function run() {
  const ann = await step("ann logs in and opens the book's page on the 0.9 client", () =>
    openBookPage("ann", "/book/socket.io-0.9.js"));
  await step("ann's 0.9 client joined the room", () => waitForBookLine(ann, "Hello ann"));
  const bob = await step("bob logs in and opens our chat room page", () => openOurPage("bob"));
  await step("ann sees bob enter", () => waitForBookLine(ann, "bob has joined the room."));
  const cid = await step("cid logs in and opens the book's page on our served client", () =>
    openBookPage("cid", "/socket.io/socket.io.js"));
  await step("cid's client joined the room", () => waitForBookLine(cid, "Hello cid"));
  await step("ann sees cid enter", () => waitForBookLine(ann, "cid has joined the room."));
  await step("bob sees ann and cid in the users list", () =>
    bob.waitForFunction(
      () => ["ann", "bob", "cid"].every((name) =>
        [...document.querySelectorAll("#users li")].some((li) => li.textContent === name)),
      null, { timeout: WAIT_MS }));

  await step("ann (0.9, the book's page) reaches bob and cid", async () => {
    await sendOnBookPage(ann, "hello from the book's 0.9 client");
    await waitForBookLine(ann, "ann: hello from the book's 0.9 client");
    await waitForBookLine(cid, "ann: hello from the book's 0.9 client");
    await waitForOurLine(bob, "ann", "hello from the book's 0.9 client");
  });
  await step("bob (our page) reaches ann and cid", async () => {
    await bob.locator("#message").fill("hello from our page");
    await bob.locator("#send").click();
    await waitForBookLine(ann, "bob: hello from our page");
    await waitForBookLine(cid, "bob: hello from our page");
  });
  await step("cid (the book's page on our client) reaches ann and bob", async () => {
    await sendOnBookPage(cid, "hello from the book's page on our client");
    await waitForBookLine(ann, "cid: hello from the book's page on our client");
    await waitForOurLine(bob, "cid", "hello from the book's page on our client");
  });
  await step("no page threw", async () => {
    if (pageErrors.length) throw new Error(`page errors: ${JSON.stringify(pageErrors)}`);
  });
}

async function step(name, body) {
  try {
    const result = await body();
    console.log(`ok   ${name}`);
    return result;
  } catch (error) {
    throw new Error(`${name}: ${error.message.split("\n")[0]}`);
  }
}

/** A new browser context (own cookie jar) logged in through the landing page. */
async function loggedIn(nickname) {
  const context = await browser.newContext();
  // The book's pages and the 0.9 bundle, on the chat's origin; everything else is the server's.
  const onChatOrigin = (url) => url.origin === new URL(base).origin;
  await context.route((url) => onChatOrigin(url) && url.pathname.startsWith("/book/"), (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path === "/book/socket.io-0.9.js") {
      return route.fulfill({ contentType: "application/javascript", body: readFileSync(bundle09) });
    }
    if (path === "/book/chatroom.js") {
      return route.fulfill({ contentType: "application/javascript", body: bookScript });
    }
    const script = new URL(route.request().url()).searchParams.get("client");
    return route.fulfill({
      contentType: "text/html; charset=utf-8",
      body: bookPage.replaceAll("SOCKET_IO_SCRIPT", script),
    });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.label = nickname;
  page.on("pageerror", (error) => pageErrors.push(`${nickname}: ${error.message}`));
  await page.goto(`${base}/`);
  await page.locator("#nickname").fill(nickname);
  await Promise.all([page.waitForURL(`${base}/rooms`), page.locator("#login").click()]);
  return page;
}

async function openBookPage(nickname, client) {
  const page = await loggedIn(nickname);
  await page.goto(`${base}/book/chatroom.html?room=${ROOM}&client=${encodeURIComponent(client)}`);
  return page;
}

async function openOurPage(nickname) {
  const page = await loggedIn(nickname);
  await page.goto(`${base}/chatroom?room=${ROOM}`);
  return page;
}

async function sendOnBookPage(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#send").click();
}

async function waitForBookLine(page, text) {
  await page
    .waitForFunction(
      (text) => [...document.querySelectorAll("#messages > div")].some((d) => d.textContent === text),
      text, { timeout: WAIT_MS })
    .catch(async () => {
      const shown = await page.$$eval("#messages > div", (ds) => ds.map((d) => d.textContent));
      throw new Error(`${page.label}: no line ${JSON.stringify(text)}; #messages has ${JSON.stringify(shown)}`);
    });
}

async function waitForOurLine(page, who, text) {
  await page
    .waitForFunction(
      ([who, text]) => [...document.querySelectorAll("#messages > .message.userMessage")].some(
        (line) => line.querySelector(".who")?.textContent === who
          && line.querySelector(".text")?.textContent === text),
      [who, text], { timeout: WAIT_MS })
    .catch(async () => {
      const shown = await page.$$eval("#messages > .message", (ls) => ls.map((l) => l.textContent));
      throw new Error(`${page.label}: no line from ${who}: ${JSON.stringify(text)}; has ${JSON.stringify(shown)}`);
    });
}
