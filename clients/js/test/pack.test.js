// The npm package as users get it: `npm pack` holds the library and nothing
// else (no tests, no embed.go), and the tarball installs into an empty
// project offline (it has no dependencies) and imports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { jsDir } from "./helpers.js";

test("npm pack gives a tarball that installs offline into an empty project and imports", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wsbus-client-pack-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, stdio: ["ignore", "pipe", "pipe"] }).toString();

  const [info] = JSON.parse(npm(["pack", "--json", "--pack-destination", dir], jsDir));
  assert.deepEqual(info.files.map((f) => f.path).sort(), ["README.md", "index.d.ts", "index.js", "package.json", "publish.d.ts", "publish.js"]);
  const pkg = JSON.parse(fs.readFileSync(path.join(jsDir, "package.json"), "utf8"));
  assert.equal(pkg.dependencies, undefined, "no runtime dependency");

  const app = path.join(dir, "app");
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  npm(["install", "--offline", path.join(dir, info.filename)], app);
  fs.writeFileSync(path.join(app, "main.js"), `
    import { Client, compareIds } from "wsbus-client";
    import { partition } from "wsbus-client/publish";
    class Quiet { constructor() { this.readyState = 0; } send() {} close() {} }
    const c = new Client("ws://127.0.0.1:1/v1/ws", { WebSocket: Quiet });
    c.close();
    console.log(JSON.stringify({ client: typeof Client, cmp: compareIds("9-0", "10-0"), p: partition("demo", 64), state: c.state }));
  `);
  const out = JSON.parse(execFileSync("node", ["main.js"], { cwd: app }).toString());
  assert.deepEqual(out, { client: "function", cmp: -1, p: 32, state: "closed" });
  assert.ok(fs.existsSync(path.join(app, "node_modules/wsbus-client/index.d.ts")));
  assert.deepEqual(fs.readdirSync(path.join(app, "node_modules")).filter((n) => !n.startsWith(".")), ["wsbus-client"], "nothing else installed");
});
