// Drives the demo page in headless Chromium as a person would: the page
// connects, an event published with a plain XADD appears, the connection
// drops, events published while away are recovered on reconnect, and the
// publish form works. Usage: node demo.mjs PAGE_URL REDIS_PORT SCREENSHOT
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
  await page.goto(pageURL);
  await page.waitForSelector("#state.open");
  await page.waitForSelector("text=subscribed to demo");
  const live = xadd('{"text":"hello from redis-cli"}');
  await page.waitForSelector(`text=${live}`);
  console.log("LIVE " + live);

  // Drop the connection and hold the reconnect while events are published.
  await page.evaluate(() => { ws.onclose = null; ws.close(); });
  await page.waitForFunction(() => ws.readyState === WebSocket.CLOSED);
  const missed = [xadd('{"n":1}'), xadd('{"n":2}'), xadd("plain text")];
  await page.evaluate(() => connect());
  await page.waitForSelector("text=resuming, recovered=true");
  for (const id of missed) await page.waitForSelector(`text=${id}`);
  await page.waitForSelector("text=recovered 3 missed event(s) on demo");
  console.log("RESUMED " + missed.join(" "));

  await page.fill("#data", '{"from":"the form"}');
  await page.click("#pub button");
  await page.waitForSelector('text={"from":"the form"}');
  console.log("PUBLISHED");
  if (shot) await page.screenshot({ path: shot });
} finally {
  await browser.close();
}
