// The packaged extension in real VS Code (code-server), driven through Chromium with
// playwright-core: install the .vsix, open a Python file, type, wait for the ghost text,
// take a screenshot, accept it with Tab, and check the status-bar item.
//
// Environment:
//   CODE_SERVER      path of code-server's out/node/entry.js
//   CODE_SERVER_NODE the node that runs it (code-server 4.139 wants node 22+)
//   PLAYWRIGHT_CORE  path of the playwright-core package (default: resolved from here)
//   CHROMIUM         browser executable (default /usr/bin/chromium)
//   DLM_LSP_COMMAND  the server, as a JSON array
//   VSIX             the extension package
//   SCREENSHOT       where to write the PNG
// Prints "DLM BROWSER OK" when the ghost text was shown and accepted.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set`);
  }
  return value;
};
const entry = env("CODE_SERVER");
const node = env("CODE_SERVER_NODE", process.execPath);
const { chromium } = require(env("PLAYWRIGHT_CORE", "playwright-core"));
const server = JSON.parse(env("DLM_LSP_COMMAND"));
const vsix = env("VSIX");
const screenshot = env("SCREENSHOT");
const port = 18080 + Math.floor(Math.random() * 1000);

const root = mkdtempSync(join(tmpdir(), "dlm-code-server-"));
const userData = join(root, "user-data");
const extensions = join(root, "extensions");
const workspace = join(root, "workspace");
mkdirSync(join(userData, "User"), { recursive: true });
mkdirSync(join(workspace, ".vscode"), { recursive: true });
writeFileSync(
  join(userData, "User", "settings.json"),
  JSON.stringify({
    "workbench.startupEditor": "none",
    "security.workspace.trust.enabled": false,
    "editor.inlineSuggest.enabled": true,
    "editor.quickSuggestions": { other: false, comments: false, strings: false },
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "workbench.tips.enabled": false,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "dlm.server.command": server[0],
    "dlm.server.args": server.slice(1),
  }),
);
writeFileSync(join(workspace, "add.py"), "def add(a, b):\n    \n");

const common = ["--user-data-dir", userData, "--extensions-dir", extensions, "--disable-telemetry"];
const install = spawnSync(node, [entry, ...common, "--install-extension", vsix], { encoding: "utf8" });
if (install.status !== 0) {
  throw new Error(`--install-extension failed:\n${install.stdout}\n${install.stderr}`);
}
console.log(install.stdout.trim());

const codeServer = spawn(
  node,
  [entry, ...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`, "--disable-workspace-trust", workspace],
  { stdio: ["ignore", "pipe", "pipe"] },
);
let serverLog = "";
codeServer.stdout.on("data", (d) => (serverLog += d));
codeServer.stderr.on("data", (d) => (serverLog += d));

async function waitForHttp(url, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      const response = await fetch(url, { redirect: "manual" });
      if (response.status < 500) {
        return;
      }
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`code-server did not answer on ${url}:\n${serverLog}`);
}

let browser;
let page;
try {
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, 120_000);
  browser = await chromium.launch({
    executablePath: env("CHROMIUM", "/usr/bin/chromium"),
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 120_000 });
  // Open add.py from the explorer.
  await page.locator(".explorer-folders-view .monaco-list-row:has-text('add.py')").first().dblclick({ timeout: 60_000 });
  const editor = page.locator(".monaco-editor .view-lines").first();
  await editor.waitFor({ timeout: 60_000 });
  await editor.click();
  await page.keyboard.press("Control+End");
  // The status-bar item names the provider once the server has started and answered.
  await page.waitForSelector(".statusbar-item:has-text('CPU')", { timeout: 60_000 });
  // Type; ask again (Alt+\ triggers an inline suggestion) until the ghost text shows.
  await page.keyboard.type("x", { delay: 100 });
  const ghost = page.locator(".ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text").first();
  let shown = false;
  for (let attempt = 0; attempt < 10 && !shown; attempt++) {
    try {
      await ghost.waitFor({ timeout: 6000 });
      shown = true;
    } catch {
      await page.keyboard.press("Alt+Backslash");
    }
  }
  await page.screenshot({ path: screenshot });
  if (!shown) {
    throw new Error("no ghost text appeared");
  }
  const ghostText = await ghost.textContent();
  console.log(`ghost text: ${JSON.stringify(ghostText)}`);
  await page.keyboard.press("Tab");
  await page.waitForTimeout(1000);
  const lines = await page.locator(".monaco-editor .view-lines").first().innerText();
  console.log(`editor after Tab:\n${lines}`);
  if (!lines.replace(/\u00a0/g, " ").includes(`x${ghostText}`)) {
    throw new Error("Tab did not insert the suggestion");
  }
  const status = await page.locator(".statusbar-item:has-text('DLM')").first().innerText();
  console.log(`status bar: ${status}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-accepted.png") });
  console.log("DLM BROWSER OK");
} catch (error) {
  console.log(`code-server log:\n${serverLog.slice(-3000)}`);
  await page?.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png") }).catch(() => undefined);
  throw error;
} finally {
  await browser?.close();
  codeServer.kill();
}
