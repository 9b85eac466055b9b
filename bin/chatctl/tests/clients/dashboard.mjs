// The master's dashboard in a real browser (Debian's chromium driven by npm playwright-core),
// driven by bin/chatctl/tests/admin_browser.rs while users chat:
//
//   node dashboard.mjs <dashboard url, with #token=...> <screenshot dir> <chromium binary>
//
// 1. Opens the page; once the live feed shows the two workers and the messages chart has
//    changed between two looks (the users' messages move it), prints {"event":"watching"}.
// 2. Reads one line on stdin (the test killed worker 0 with SIGKILL): waits for a `crash`
//    event of worker 0 in the events list, with the log lines, and prints {"event":"crash"}.
// 3. Scales the app to 3 workers with the page's own button (the token from the URL, same
//    origin) and waits for three rows: prints {"event":"scaled"} and exits 0.
// Screenshots of each step go to the screenshot directory (`failure.png` when a step failed).
// The page must raise no error and break no Content-Security-Policy rule. On a failure it
// prints {"event":"error",...} and exits 1.

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import readline from "node:readline";

const [url, shotDir, executablePath] = process.argv.slice(2);
if (!/^http:\/\//.test(url || "") || !shotDir || !executablePath) {
  console.error("usage: node dashboard.mjs http://ADMIN/#token=TOKEN SCREENSHOT_DIR CHROMIUM");
  process.exit(2);
}

// The Rust side checked that ops/test-deps.sh installed playwright-core (in ops/js) and the
// browser.
const playwright = new URL("../../../../ops/js/package.json", import.meta.url);
const { chromium } = createRequire(playwright)("playwright-core");

/** Every wait: the machine may be busy building and running tests; below the Rust side's
 * 60 s for a report, so that a step that times out here says which. */
const WAIT_MS = 45_000;

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("the test closed stdin");
  return value;
}

mkdirSync(shotDir, { recursive: true });
const problems = []; // page errors and console errors (a CSP violation is one)
let browser;
let page;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
    timeout: 60_000,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  await page.goto(url);

  await page.waitForFunction(() => document.getElementById("feed-state").textContent === "live", null, { timeout: WAIT_MS });
  await page.waitForFunction(() => document.querySelectorAll("#workers tbody tr").length === 2, null, { timeout: WAIT_MS });
  if (page.url().includes("token=")) throw new Error("the token stayed in the address bar");
  // The charts move: the messages chart drawn now differs from the one drawn a moment later,
  // and it has drawn points above zero.
  const chart = "#chart-messages";
  await page.waitForFunction((sel) => Number(document.querySelector(sel).dataset.points || 0) >= 2, chart, { timeout: WAIT_MS });
  const first = await page.$eval(chart, (c) => c.toDataURL());
  await page.waitForFunction(
    ([sel, before]) => {
      const canvas = document.querySelector(sel);
      return canvas.toDataURL() !== before && Number(canvas.dataset.max) > 1;
    },
    [chart, first],
    { timeout: WAIT_MS },
  );
  const connections = await page.$eval("#chart-connections", (c) => Number(c.dataset.max));
  if (!(connections >= 1)) throw new Error(`the connections chart shows no connection (max ${connections})`);
  await page.screenshot({ path: join(shotDir, "1-chatting.png"), fullPage: true });
  report("watching");

  await nextLine();
  const crash = "#events li[data-kind=crash]";
  await page.waitForSelector(crash, { timeout: WAIT_MS });
  const text = await page.$eval(crash, (li) => li.textContent);
  if (!/worker 0/.test(text) || !/signal 9/.test(text)) throw new Error(`the crash reads: ${text}`);
  const logLines = await page.$$eval(`${crash} pre`, (pres) => pres.map((p) => p.textContent).join("\n"));
  if (!logLines.trim()) throw new Error("the crash came without its log lines");
  // The table shows the restart, and the new process online.
  await page.waitForFunction(() => {
    const row = document.querySelector('#workers tbody tr[data-worker="0"]');
    return row && row.children[4].textContent === "1" && row.children[2].textContent === "online";
  }, null, { timeout: WAIT_MS });
  await page.screenshot({ path: join(shotDir, "2-crash.png"), fullPage: true });
  report("crash", { text });

  await page.fill("#instances", "3");
  await page.click("#scale");
  await page.waitForFunction(() => document.querySelectorAll("#workers tbody tr").length === 3, null, { timeout: WAIT_MS });
  await page.waitForFunction(() => /scaled to 3/.test(document.getElementById("action-result").textContent), null, { timeout: WAIT_MS });
  await page.screenshot({ path: join(shotDir, "3-scaled.png"), fullPage: true });
  if (problems.length) throw new Error(problems.join("; "));
  report("scaled");
  await browser.close();
  process.exit(0);
} catch (error) {
  if (page) await page.screenshot({ path: join(shotDir, "failure.png"), fullPage: true }).catch(() => {});
  report("error", { message: error.message, problems });
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
