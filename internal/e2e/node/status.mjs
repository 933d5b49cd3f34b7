// Drives the status page (GET /status) in headless Chromium: the page,
// opened with the operator key in its URL, shows every partition owned by
// the one live node, then, with no reload, follows the fleet when a second
// node joins and the partitions are shared between the two. No request
// leaves the gateway.
// Usage: node status.mjs PAGE_URL PARTITIONS NODE1 NODE2 SCREENSHOT
// It prints "ONE NODE" once the first state is on screen and waits for the
// caller to start NODE2; then "TWO NODES".
import { chromium } from "playwright-core";

const [pageURL, partitions, node1, node2, shot] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.setDefaultTimeout(20000);
  const origin = new URL(pageURL).origin;
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin)) foreign.push(r.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // owners is true once the table lists every partition, each owned by one
  // of the nodes given, and the nodes table lists exactly those nodes.
  const owners = (nodes) => page.waitForFunction(([n, nodes]) => {
    const rows = [...document.querySelectorAll("#partitions tbody tr")];
    const listed = [...document.querySelectorAll("#nodes tbody tr td:first-child")].map((td) => td.textContent);
    const seen = new Set(rows.map((r) => r.cells[1].dataset.owner));
    return rows.length === n && rows.every((r, i) => r.dataset.p === String(i)) &&
      seen.size === nodes.length && nodes.every((id) => seen.has(id)) &&
      listed.length === nodes.length && nodes.every((id) => listed.some((t) => t.startsWith(id)));
  }, [Number(partitions), nodes]);

  await page.goto(pageURL);
  await owners([node1]);
  console.log("ONE NODE");
  // The caller starts the second node now; the page must follow by itself.
  await owners([node1, node2]);
  const summary = await page.textContent("#summary");
  if (!summary.includes(`${partitions} partitions`) || !summary.includes("2 live nodes")) {
    throw new Error("summary: " + summary);
  }
  const state = await page.textContent("#state");
  if (!state.startsWith("updated ")) throw new Error("state: " + state);
  console.log("TWO NODES");
  if (foreign.length) throw new Error("the page fetched from elsewhere: " + foreign.join(" "));
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  if (shot) await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
