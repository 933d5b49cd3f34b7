// Drives the demo page in headless Chromium as a person would. The page is
// built on wsbus-client, which the gateway serves at /wsbus-client.js: the
// page connects, an event published with a plain XADD appears; the page
// disconnects, events are published, it connects again and the library
// reports them recovered; the connection is dropped and comes back by
// itself; a reload resumes from the cursor kept in localStorage; the
// publish form works. No request leaves the gateway (no CDN).
// Usage: node demo.mjs PAGE_URL REDIS_PORT SCREENSHOT
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const [pageURL, redisPort, shot] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const xadd = (data) => execFileSync("redis-cli", ["-p", redisPort, "XADD", "wsbus:{32}:in", "*", "topic", "demo", "data", data]).toString().trim();

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(10000);
  const origin = new URL(pageURL).origin;
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith(origin.replace("http", "ws"))) foreign.push(r.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const lines = (text) => page.locator("#events div", { hasText: text }).count();

  await page.goto(pageURL);
  await page.waitForSelector("#state.open");
  await page.waitForSelector("text=subscribed to demo");
  const live = xadd('{"text":"hello from redis-cli"}');
  await page.waitForSelector(`text=${live}`);
  console.log("LIVE " + live);

  // Stay away while events are published, then come back.
  await page.click("#toggle");
  await page.waitForSelector("#state.closed");
  const missed = [xadd('{"n":1}'), xadd('{"n":2}'), xadd("plain text")];
  await page.click("#toggle");
  await page.waitForSelector("text=resuming, recovered=true");
  for (const id of missed) await page.waitForSelector(`text=${id}`);
  await page.waitForSelector("text=recovered 3 missed event(s) on demo");
  console.log("RESUMED " + missed.join(" "));

  // Drop the socket: the library reconnects by itself and resumes.
  const before = await lines("recovered 0 missed event(s) on demo");
  await page.click("#drop");
  await page.waitForFunction((n) => [...document.querySelectorAll("#events div")]
    .filter((d) => d.textContent.includes("recovered 0 missed event(s) on demo")).length > n, before);
  await page.waitForSelector("#state.open");
  console.log("DROPPED");

  // Reload: a new page, a new Client, the same localStorage.
  await page.click("#toggle");
  await page.waitForSelector("#state.closed");
  const away = [xadd('{"n":3}'), xadd('{"n":4}')];
  await page.reload();
  await page.waitForSelector("text=resuming, recovered=true");
  for (const id of away) await page.waitForSelector(`text=${id}`);
  await page.waitForSelector("text=recovered 2 missed event(s) on demo");
  if (await lines(live) !== 0) throw new Error("the reload delivered an event it had already handed over: " + live);
  console.log("RELOADED " + away.join(" "));

  await page.fill("#data", '{"from":"the form"}');
  await page.click("#pub button");
  await page.waitForSelector('text={"from":"the form"}');
  console.log("PUBLISHED");
  if (foreign.length) throw new Error("the page fetched from elsewhere: " + foreign.join(" "));
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  if (shot) await page.screenshot({ path: shot });
} finally {
  await browser.close();
}
