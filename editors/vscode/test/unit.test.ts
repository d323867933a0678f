/**
 * Unit tests of the extension's pure logic (no VS Code needed): settings, the server
 * command's resolution, fill parameters and edits, the status bar, the restart policy.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { applyEdits, fillEdits, fillParams, selectionsToHoles } from "../src/fill";
import { RestartPolicy } from "../src/restartPolicy";
import { parseCommandLine, resolveServerCommand, scriptBesidePython } from "../src/serverCommand";
import {
  DEFAULT_SETTINGS,
  completionsWanted,
  enabledLanguages,
  readServerSettings,
  wireSettings,
} from "../src/settings";
import { asServerStatus, formatLatency, statusBarView, statusReport } from "../src/status";

const pos = (line: number, character: number) => ({ line, character });
const range = (l1: number, c1: number, l2: number, c2: number) => ({ start: pos(l1, c1), end: pos(l2, c2) });

describe("settings", () => {
  test("defaults when nothing is set", () => {
    const { settings, problems } = readServerSettings(() => undefined);
    assert.deepEqual(settings, DEFAULT_SETTINGS);
    assert.deepEqual(problems, []);
  });

  test("reads every key and merges languages over the defaults", () => {
    const values: Record<string, unknown> = {
      modelDir: "/models/tiny",
      maxSteps: 4,
      threshold: 0.5,
      languages: { python: true, go: false, lua: true },
      enable: false,
      holeMarker: "<HOLE>",
      logLevel: "debug",
    };
    const { settings, problems } = readServerSettings((k) => values[k]);
    assert.deepEqual(problems, []);
    assert.equal(settings.modelDir, "/models/tiny");
    assert.equal(settings.maxSteps, 4);
    assert.equal(settings.threshold, 0.5);
    assert.equal(settings.languages.go, false);
    assert.equal(settings.languages.lua, true);
    assert.equal(settings.languages.rust, true);
    assert.equal(settings.enable, false);
    assert.equal(settings.holeMarker, "<HOLE>");
    assert.equal(settings.logLevel, "debug");
  });

  test("malformed values fall back to defaults and are reported", () => {
    const values: Record<string, unknown> = {
      maxSteps: 0,
      threshold: 3,
      languages: ["python"],
      enable: "yes",
      holeMarker: "",
      logLevel: "loud",
      modelDir: 42,
    };
    const { settings, problems } = readServerSettings((k) => values[k]);
    assert.deepEqual(settings, DEFAULT_SETTINGS);
    assert.equal(problems.length, 7);
    assert.match(problems.join("\n"), /dlm\.maxSteps/);
  });

  test("an empty modelDir means the shipped model", () => {
    assert.equal(readServerSettings((k) => (k === "modelDir" ? "" : undefined)).settings.modelDir, null);
  });

  test("enabled languages and whether to complete", () => {
    const { settings } = readServerSettings((k) => (k === "languages" ? { go: false, rust: false } : undefined));
    assert.deepEqual(enabledLanguages(settings), ["javascript", "javascriptreact", "python", "typescript", "typescriptreact"]);
    assert.equal(completionsWanted(settings, "python"), true);
    assert.equal(completionsWanted(settings, "go"), false);
    assert.equal(completionsWanted(settings, "markdown"), false);
    assert.equal(completionsWanted({ ...settings, enable: false }, "python"), false);
  });

  test("the wire form is nested under dlm", () => {
    assert.deepEqual(Object.keys(wireSettings(DEFAULT_SETTINGS)), ["dlm"]);
    assert.equal(wireSettings(DEFAULT_SETTINGS).dlm.holeMarker, "<|hole|>");
  });
});

describe("server command", () => {
  const base = {
    configuredCommand: "",
    configuredArgs: [],
    configuredPython: "",
    platform: "linux",
    pathEnv: "/usr/local/bin:/usr/bin",
    isExecutable: () => false,
  };

  test("an explicit command wins, with its args", () => {
    const c = resolveServerCommand({ ...base, configuredCommand: " /opt/dlm-lsp ", configuredArgs: ["--tcp", "x"] });
    assert.deepEqual(c, { command: "/opt/dlm-lsp", args: ["--tcp", "x"], source: "setting" });
  });

  test("the configured python's console script, else python -m dlm_lsp", () => {
    const withScript = resolveServerCommand({
      ...base,
      configuredPython: "/venv/bin/python",
      isExecutable: (f) => f === "/venv/bin/dlm-lsp",
    });
    assert.deepEqual(withScript, { command: "/venv/bin/dlm-lsp", args: [], source: "pythonPath" });
    const withoutScript = resolveServerCommand({ ...base, configuredPython: "/venv/bin/python" });
    assert.deepEqual(withoutScript, { command: "/venv/bin/python", args: ["-m", "dlm_lsp"], source: "pythonPath" });
  });

  test("the Python extension's environment only when it has dlm-lsp, then PATH", () => {
    const fromExtension = resolveServerCommand({
      ...base,
      selectedPython: "/proj/.venv/bin/python3",
      isExecutable: (f) => f === "/proj/.venv/bin/dlm-lsp" || f === "/usr/bin/dlm-lsp",
    });
    assert.equal(fromExtension.command, "/proj/.venv/bin/dlm-lsp");
    assert.equal(fromExtension.source, "pythonExtension");
    const fromPath = resolveServerCommand({
      ...base,
      selectedPython: "/opt/python/bin/python3",
      isExecutable: (f) => f === "/usr/bin/dlm-lsp",
    });
    assert.deepEqual(fromPath, { command: "/usr/bin/dlm-lsp", args: [], source: "PATH" });
    assert.equal(resolveServerCommand(base).command, "dlm-lsp");
  });

  test("windows paths", () => {
    assert.equal(scriptBesidePython("C:\\venv\\Scripts\\python.exe", "win32"), "C:\\venv\\Scripts\\dlm-lsp.exe");
    const c = resolveServerCommand({
      ...base,
      platform: "win32",
      pathEnv: "C:\\a;C:\\b",
      isExecutable: (f) => f === "C:\\b\\dlm-lsp.exe",
    });
    assert.equal(c.command, "C:\\b\\dlm-lsp.exe");
  });

  test("command lines as JSON or words", () => {
    assert.deepEqual(parseCommandLine('["/x y/python", "-m", "dlm_lsp"]'), ["/x y/python", "-m", "dlm_lsp"]);
    assert.deepEqual(parseCommandLine("  python  -m dlm_lsp "), ["python", "-m", "dlm_lsp"]);
    assert.throws(() => parseCommandLine("   "));
    assert.throws(() => parseCommandLine("[1]"));
  });
});

describe("fill", () => {
  test("selections become ordered, disjoint, non-empty holes", () => {
    const holes = selectionsToHoles([
      range(5, 0, 5, 0), // a bare cursor: not a hole
      range(3, 4, 1, 2), // backwards
      range(0, 0, 0, 3),
      range(2, 0, 4, 1), // overlaps the backwards one
    ]);
    assert.deepEqual(holes, [range(0, 0, 0, 3), range(1, 2, 4, 1)]);
  });

  test("params carry holes only when given", () => {
    assert.deepEqual(fillParams("file:///a.py"), { textDocument: { uri: "file:///a.py" } });
    assert.deepEqual(fillParams("file:///a.py", [range(0, 0, 0, 1)]).holes, [range(0, 0, 0, 1)]);
  });

  test("answers are checked", () => {
    const edit = { range: range(1, 4, 1, 12), newText: "return a + b" };
    assert.deepEqual(fillEdits({ edits: [edit] }), [edit]);
    assert.deepEqual(fillEdits({ edits: [] }), []);
    assert.throws(() => fillEdits(null), /without edits/);
    assert.throws(() => fillEdits({ edits: [{ range: range(0, 0, 0, 0) }] }), /malformed/);
  });

  test("edits apply from last to first, in UTF-16 units", () => {
    const text = "def add(a, b):\n    <|hole|>\n\nx = '😀' + <|hole|>\n";
    const edits = [
      { range: range(1, 4, 1, 12), newText: "return a + b" },
      { range: range(3, 11, 3, 19), newText: "'é'" },
    ];
    assert.equal(applyEdits(text, edits), "def add(a, b):\n    return a + b\n\nx = '😀' + 'é'\n");
  });
});

describe("status", () => {
  test("dlm/status answers are checked", () => {
    const ok = { model: "tiny", provider: "CUDA", lastLatencyMs: 12.5, version: "0.1.0" };
    assert.deepEqual(asServerStatus(ok), { ...ok, error: null });
    assert.equal(asServerStatus({ ...ok, lastLatencyMs: null })?.lastLatencyMs, null);
    assert.equal(asServerStatus({ ...ok, provider: 1 }), undefined);
    const noModel = asServerStatus({ ...ok, model: null, provider: null, error: "no model.json" });
    assert.equal(noModel?.model, null);
    assert.equal(statusBarView("running", noModel, undefined).text, "$(warning) DLM · no model");
    assert.match(statusReport(noModel!, "dlm-lsp"), /no model: no model.json/);
    assert.equal(asServerStatus("up"), undefined);
  });

  test("latencies read well", () => {
    assert.equal(formatLatency(84.6), "85 ms");
    assert.equal(formatLatency(1234), "1.2 s");
    assert.equal(formatLatency(Number.NaN), "–");
  });

  test("the status bar shows latency and provider", () => {
    const status = { model: "tiny", provider: "CPU", lastLatencyMs: 40, version: "0.1.0" };
    assert.equal(statusBarView("running", status, 55).text, "$(sparkle) DLM · 40 ms · CPU");
    assert.equal(statusBarView("running", { ...status, lastLatencyMs: null }, 55).text, "$(sparkle) DLM · 55 ms · CPU");
    assert.equal(statusBarView("running", undefined, undefined).text, "$(sparkle) DLM");
    assert.match(statusBarView("disabled", status, undefined).text, /circle-slash/);
    assert.match(statusBarView("stopped", status, undefined).tooltip, /not running/);
  });
});

describe("restart policy", () => {
  test("restarts until too many deaths in the window", () => {
    const policy = new RestartPolicy(2, 1000);
    assert.equal(policy.shouldRestart(0), true);
    assert.equal(policy.shouldRestart(10), true);
    assert.equal(policy.shouldRestart(20), false);
    assert.equal(policy.shouldRestart(5000), true); // the old deaths left the window
    policy.reset();
    assert.equal(policy.shouldRestart(5001), true);
  });
});
