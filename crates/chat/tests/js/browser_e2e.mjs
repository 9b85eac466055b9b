// The chat in a real browser (DESIGN §7): Debian's chromium, driven by npm playwright-core, against
// a live chat server. Three users, each in a browser context of their own (own cookie jar):
//
// - ann and bob log in through the landing page form and open /chatroom?room=lobby; cid logs in
//   and opens /chatroom?room=other. Each page shows the room's greeting.
// - ann and bob see each other enter (the `user_entered` line, the users list).
// - messages go both ways and render as `.message.myMessage` for the sender and
//   `.message.userMessage` (with the sender's name) for the other.
// - cid sees none of the lobby's messages: a later message of cid's own, which does arrive, proves
//   that anything sent to cid before it would have arrived too (one connection, in order).
// - /rooms, opened in another page of ann's context, shows `lobby` with `[ 2 Users ]`.
// - `<img src=x onerror=alert(1)>` sent by bob shows as that literal text on ann's page: no `img`
//   element in #messages, and no dialog ever opens.
//
// With CHATCTL_E2E_FAULT set (bin/chatctl/tests/browser_cluster.rs), ann and bob then live
// through a fault: the script prints `fault: now` and waits for a line on stdin (the test has
// reloaded every worker meanwhile, and each old worker handed its sessions to its replacement).
// Their pages never see the connection end: a line said after it shows once, nobody leaves or
// enters, no greeting repeats.
//
// Each page is screenshotted into the screenshot directory at the end (`failure-*.png` instead
// when a step failed), and each landing page with the nickname typed in. Prints one line per step; exits 1 at the first failed step.
//
//   node crates/chat/tests/js/browser_e2e.mjs http://127.0.0.1:3000 target/test-output/browser
//
// The browser is $CHATCTL_CHROMIUM, else /usr/bin/chromium; ops/test-deps.sh installs it and
// playwright-core (which never downloads a browser of its own).

import { createRequire } from "node:module";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const base = (process.argv[2] || "").replace(/\/$/, "");
const shotDir = process.argv[3];
if (!/^https?:\/\//.test(base) || !shotDir) {
  console.error("usage: node browser_e2e.mjs http://HOST:PORT SCREENSHOT_DIR");
  process.exit(2);
}

// ESM ignores NODE_PATH: resolve npm packages from ops/js, where ops/test-deps.sh installs them.
const opsJs = new URL("../../../../ops/js/", import.meta.url);
if (!existsSync(new URL("node_modules/playwright-core", opsJs))) {
  console.error("ops/js/node_modules/playwright-core is missing: run ops/test-deps.sh");
  process.exit(2);
}
const { chromium } = createRequire(new URL("package.json", opsJs))("playwright-core");

const executablePath = process.env.CHATCTL_CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`${executablePath} is missing: run ops/test-deps.sh (Debian: apt-get install chromium)`);
  process.exit(2);
}

/** Every wait: loopback round trips, but the machine may be busy building and running tests. */
const WAIT_MS = 30_000;
const XSS = "<img src=x onerror=alert(1)>";

mkdirSync(shotDir, { recursive: true });
const started = Date.now();
const pages = []; // every page, screenshotted at the end as its `shot` name
const dialogs = []; // every dialog any page opened: the XSS check wants none
const pageErrors = []; // uncaught exceptions in the page scripts

let browser;
let failed = false;
try {
  // Playwright gives the browser a fresh temporary --user-data-dir (removed on close), so nothing
  // of a previous run or of the machine's own chromium profile leaks in; each user's context is
  // an incognito-like one of its own in it.
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
    ],
    timeout: 60_000,
  });
  const contexts = {};
  for (const user of ["ann", "bob", "cid"]) {
    contexts[user] = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  }
  await run(contexts);
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.message}`);
} finally {
  await screenshots(failed ? "failure-" : "");
  if (browser) await browser.close().catch(() => {});
}
console.log(`${failed ? "failed" : "passed"} in ${Date.now() - started} ms; screenshots in ${shotDir}`);
process.exit(failed ? 1 : 0);

async function run(contexts) {
  const ann = await step("ann logs in through the landing page", () => login(contexts.ann, "ann"));
  const bob = await step("bob logs in through the landing page", () => login(contexts.bob, "bob"));
  const cid = await step("cid logs in through the landing page", () => login(contexts.cid, "cid"));

  await step("ann opens lobby and sees its greeting", () => openRoom(ann, "lobby"));
  await step("cid opens other and sees its greeting", () => openRoom(cid, "other"));
  await step("bob opens lobby and sees its greeting", () => openRoom(bob, "lobby"));

  await step("ann sees bob enter", async () => {
    await waitForLine(ann, "userEvent", "", "bob entered the room");
    await waitForUsers(ann, ["ann", "bob"]);
  });
  await step("bob sees ann in the users list", () => waitForUsers(bob, ["ann", "bob"]));

  await step("ann's message reaches bob", async () => {
    await send(ann, "hello from ann");
    await waitForLine(ann, "myMessage", "ann", "hello from ann");
    await waitForLine(bob, "userMessage", "ann", "hello from ann");
  });
  await step("bob's reply reaches ann", async () => {
    await send(bob, "hi ann, bob here");
    await waitForLine(bob, "myMessage", "bob", "hi ann, bob here");
    await waitForLine(ann, "userMessage", "bob", "hi ann, bob here");
  });

  await step("markup in a message is shown as text", async () => {
    await send(bob, XSS);
    await waitForLine(bob, "myMessage", "bob", XSS);
    await waitForLine(ann, "userMessage", "bob", XSS);
    for (const page of [ann, bob]) {
      const images = await page.locator("#messages img").count();
      if (images !== 0) throw new Error(`${page.label}: ${images} img element(s) inside #messages`);
    }
  });

  await step("cid in other sees none of lobby's messages", async () => {
    await send(cid, "cid's sentinel in other");
    await waitForLine(cid, "myMessage", "cid", "cid's sentinel in other");
    const lines = await messageLines(cid);
    const leaked = lines.filter((line) => /ann|bob|<img/.test(line));
    if (leaked.length) throw new Error(`cid's page shows lobby lines: ${JSON.stringify(leaked)}`);
    const users = await userNames(cid);
    if (users.join() !== "cid") throw new Error(`cid's users list is ${JSON.stringify(users)}`);
  });
  await step("lobby sees none of other's messages", async () => {
    await send(ann, "last word from ann");
    await waitForLine(bob, "userMessage", "ann", "last word from ann");
    for (const page of [ann, bob]) {
      const leaked = (await messageLines(page)).filter((line) => line.includes("sentinel"));
      if (leaked.length) throw new Error(`${page.label} shows other's lines: ${JSON.stringify(leaked)}`);
    }
  });

  await step("/rooms shows lobby with [ 2 Users ]", async () => {
    const rooms = await newPage(contexts.ann, "ann-rooms");
    await rooms.goto(`${base}/rooms`);
    await rooms.waitForFunction(
      () => {
        const count = (room) =>
          document.querySelector(`#rooms li[data-room="${room}"] .count`)?.textContent;
        return count("lobby") === "[ 2 Users ]" && count("other") === "[ 1 User ]";
      },
      null,
      { timeout: WAIT_MS },
    ).catch(async () => {
      const shown = await rooms.locator("#rooms li").allTextContents();
      throw new Error(`the rooms list is ${JSON.stringify(shown)}`);
    });
  });

  if (process.env.CHATCTL_E2E_FAULT) await acrossAFault(ann, bob);

  await step("no page opened a dialog or threw", async () => {
    if (dialogs.length) throw new Error(`dialogs opened: ${JSON.stringify(dialogs)}`);
    if (pageErrors.length) throw new Error(`page errors: ${JSON.stringify(pageErrors)}`);
  });
}

/**
 * ann and bob across a fault the test makes (a reload of every worker, which hands their
 * connections to the new workers): neither page sees its connection end, and neither misses or
 * repeats anything.
 */
async function acrossAFault(ann, bob) {
  const before = {};
  for (const page of [ann, bob]) {
    before[page.label] = await messageLines(page);
    // Every status the page shows from now on.
    await page.evaluate(() => {
      window.statusSeen = [];
      const status = document.querySelector("#status");
      new MutationObserver(() => window.statusSeen.push(status.textContent)).observe(status, {
        childList: true,
        characterData: true,
        subtree: true,
      });
    });
  }
  console.log("fault: now");
  await new Promise((resolve) => process.stdin.once("data", resolve));
  process.stdin.pause();
  await step("ann and bob never see a reconnect: their connections moved to the new workers", async () => {
    for (const page of [ann, bob]) {
      const seen = await page.evaluate(() => window.statusSeen);
      if (seen.length !== 0) throw new Error(`${page.label}: the status went ${JSON.stringify(seen)}`);
    }
  });
  await step("a line said after the fault reaches bob once", async () => {
    await send(ann, "after the fault");
    await waitForLine(bob, "userMessage", "ann", "after the fault");
    await waitForLine(ann, "myMessage", "ann", "after the fault");
  });
  await step("the pages are as before the fault, plus that line", async () => {
    for (const page of [ann, bob]) {
      const lines = await messageLines(page);
      const added = lines.slice(before[page.label].length);
      const kept = lines.slice(0, before[page.label].length);
      if (JSON.stringify(kept) !== JSON.stringify(before[page.label]) || added.length !== 1 ||
          !added[0].endsWith("| after the fault")) {
        throw new Error(`${page.label}: #messages went from ${JSON.stringify(before[page.label])} to ${JSON.stringify(lines)}`);
      }
      await waitForUsers(page, ["ann", "bob"]);
    }
  });
}

/** Runs one step, printing its outcome; a failure names the step. */
async function step(name, body) {
  try {
    const result = await body();
    console.log(`ok   ${name}`);
    return result;
  } catch (error) {
    throw new Error(`${name}: ${error.message.split("\n")[0]}`);
  }
}

/**
 * A page that records dialogs and page errors. `label` names it in failures; `shot` is its
 * screenshot's name, following what it shows.
 */
async function newPage(context, label) {
  const page = await context.newPage();
  page.label = label;
  page.shot = label;
  page.setDefaultTimeout(WAIT_MS);
  page.on("dialog", (dialog) => {
    dialogs.push(`${label}: ${dialog.type()} ${JSON.stringify(dialog.message())}`);
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (error) => pageErrors.push(`${label}: ${error.message}`));
  pages.push(page);
  return page;
}

/** The landing page's form, then the redirect to /rooms, which names the user. */
async function login(context, nickname) {
  const page = await newPage(context, nickname);
  await page.goto(`${base}/`);
  await page.locator("#nickname").fill(nickname);
  const landingShot = join(shotDir, `${nickname}-landing.png`);
  await page.screenshot({ path: landingShot });
  console.log(`screenshot ${landingShot}`);
  await Promise.all([page.waitForURL(`${base}/rooms`), page.locator("#login").click()]);
  page.shot = `${nickname}-rooms`;
  const me = await page.locator("#me").textContent();
  if (me !== nickname) throw new Error(`/rooms says logged in as ${JSON.stringify(me)}`);
  return page;
}

async function openRoom(page, room) {
  page.shot = `${page.label}-${room}`;
  await page.goto(`${base}/chatroom?room=${encodeURIComponent(room)}`);
  await waitForText(page, "#status", "connected");
  await waitForLine(page, "serverMessage", "", `Welcome to ${room}!`);
}

async function send(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#send").click();
}

async function waitForText(page, selector, text) {
  await page
    .waitForFunction(
      ([selector, text]) => document.querySelector(selector)?.textContent === text,
      [selector, text],
      { timeout: WAIT_MS },
    )
    .catch(async () => {
      const shown = await page.locator(selector).textContent().catch(() => null);
      throw new Error(`${page.label}: ${selector} shows ${JSON.stringify(shown)}, not ${JSON.stringify(text)}`);
    });
}

/** Waits for a `.message.KIND` line in #messages whose name and text are exactly these. */
async function waitForLine(page, kind, who, text) {
  await page
    .waitForFunction(
      ([kind, who, text]) =>
        [...document.querySelectorAll(`#messages > .message.${kind}`)].some(
          (line) =>
            (line.querySelector(".who")?.textContent ?? "") === who &&
            line.querySelector(".text")?.textContent === text,
        ),
      [kind, who, text],
      { timeout: WAIT_MS },
    )
    .catch(async () => {
      const shown = await messageLines(page).catch(() => []);
      throw new Error(
        `${page.label}: no .message.${kind} line ${JSON.stringify([who, text])} within ${WAIT_MS} ms; ` +
          `#messages has ${JSON.stringify(shown)}`,
      );
    });
}

async function waitForUsers(page, expected) {
  await page
    .waitForFunction(
      (expected) =>
        [...document.querySelectorAll("#users li")].map((li) => li.textContent).sort().join("\n") ===
        expected.join("\n"),
      [...expected].sort(),
      { timeout: WAIT_MS },
    )
    .catch(async () => {
      throw new Error(`${page.label}: the users list is ${JSON.stringify(await userNames(page))}`);
    });
}

/** Each line of #messages as "CLASSES | NAME | TEXT", for checks and failure reports. */
function messageLines(page) {
  return page.$$eval("#messages > .message", (lines) =>
    lines.map(
      (line) =>
        `${line.className} | ${line.querySelector(".who")?.textContent ?? ""} | ${
          line.querySelector(".text")?.textContent ?? ""
        }`,
    ),
  );
}

function userNames(page) {
  return page.$$eval("#users li", (items) => items.map((item) => item.textContent));
}

async function screenshots(prefix) {
  for (const page of pages) {
    if (page.isClosed()) continue;
    const path = join(shotDir, `${prefix}${page.shot}.png`);
    await page.screenshot({ path, fullPage: true, timeout: WAIT_MS }).then(
      () => console.log(`screenshot ${path}`),
      (error) => console.error(`cannot screenshot ${page.shot}: ${error.message.split("\n")[0]}`),
    );
  }
}
