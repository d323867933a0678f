/**
 * End to end: the real server over stdio, driven with vscode-languageserver-protocol (the
 * library VS Code's own language client is built on), through initialize → didOpen →
 * inlineCompletion → completion → dlm/fill (request and command) → dlm/status → shutdown.
 *
 * The server command comes from DLM_LSP_COMMAND (a JSON array or words). Without it the
 * suite is skipped, except under CI=true, where that is a failure. With DLM_LSP_FAKE=1 the
 * server is tests/editors/fake_dlm_server.py and its exact texts are asserted; the real tiny
 * model's text is not predictable, so against it only the shapes and the edits' effect are.
 */

import assert from "node:assert/strict";
import { ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";
import {
  CompletionRequest,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  InitializeRequest,
  InitializedNotification,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  ProtocolConnection,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  createProtocolConnection,
} from "vscode-languageserver-protocol/node";
import { FILL_METHOD, STATUS_METHOD, applyEdits, fillEdits, fillParams } from "../src/fill";
import { parseCommandLine } from "../src/serverCommand";
import { asServerStatus } from "../src/status";
import { wireSettings, DEFAULT_SETTINGS } from "../src/settings";

const commandLine = process.env.DLM_LSP_COMMAND;
const fake = process.env.DLM_LSP_FAKE === "1";
const inCI = process.env.CI === "true";
const REQUEST_TIMEOUT_MS = 90_000;

if (!commandLine && inCI) {
  throw new Error("DLM_LSP_COMMAND is not set, and CI=true: the e2e test must run in CI");
}

const ADD_URI = "file:///tmp/dlm-e2e/add.py";
const ADD_TEXT = "def add(a, b):\n    ";
const HOLES_URI = "file:///tmp/dlm-e2e/holes.py";
const HOLES_TEXT = "def add(a, b):\n    <|hole|>\n\n\ndef sub(a, b):\n    <|hole|>\n";

describe("dlm-lsp over stdio", { skip: commandLine ? false : "DLM_LSP_COMMAND is not set" }, () => {
  let server: ChildProcessWithoutNullStreams;
  let connection: ProtocolConnection;
  let stderr = "";
  let exitCode: number | null | undefined;

  /** A request that fails with the server's log instead of hanging. */
  async function request<R>(what: string, send: () => Promise<R>): Promise<R> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what}: no answer in ${REQUEST_TIMEOUT_MS} ms; server log:\n${stderr.slice(-4000)}`)),
        REQUEST_TIMEOUT_MS,
      );
    });
    try {
      return await Promise.race([send(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  before(async () => {
    const [command, ...args] = parseCommandLine(commandLine ?? "");
    server = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    server.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-20_000);
    });
    server.on("exit", (code) => {
      exitCode = code;
    });
    connection = createProtocolConnection(
      new StreamMessageReader(server.stdout),
      new StreamMessageWriter(server.stdin),
    );
    connection.listen();
  });

  after(async () => {
    connection?.dispose();
    if (server && exitCode === undefined) {
      server.kill();
    }
  });

  test("initialize advertises inline completion and dlm.fill", async () => {
    const result = await request("initialize", () =>
      connection.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        rootUri: null,
        workspaceFolders: null,
        capabilities: {
          textDocument: {
            inlineCompletion: { dynamicRegistration: false },
            completion: { completionItem: { snippetSupport: false } },
            synchronization: { dynamicRegistration: false },
          },
          general: { positionEncodings: ["utf-16"] },
        },
        initializationOptions: wireSettings({ ...DEFAULT_SETTINGS, maxSteps: 4 }),
      }),
    );
    const caps = result.capabilities;
    assert.ok(caps.inlineCompletionProvider, `no inlineCompletionProvider in ${JSON.stringify(caps)}`);
    assert.ok(caps.completionProvider, "no completionProvider");
    assert.ok(caps.executeCommandProvider?.commands.includes("dlm.fill"), "dlm.fill is not a command");
    await connection.sendNotification(InitializedNotification.type, {});
    for (const [uri, text] of [
      [ADD_URI, ADD_TEXT],
      [HOLES_URI, HOLES_TEXT],
    ]) {
      await connection.sendNotification(DidOpenTextDocumentNotification.type, {
        textDocument: { uri, languageId: "python", version: 1, text },
      });
    }
  });

  test("inlineCompletion answers items with insertText and range", async () => {
    const result = await request("inlineCompletion", () =>
      connection.sendRequest(InlineCompletionRequest.type, {
        textDocument: { uri: ADD_URI },
        position: { line: 1, character: 4 },
        context: { triggerKind: InlineCompletionTriggerKind.Automatic },
      }),
    );
    const items = Array.isArray(result) ? result : (result?.items ?? []);
    for (const item of items) {
      assert.equal(typeof item.insertText, "string");
      assert.ok(item.range, `an item without a range: ${JSON.stringify(item)}`);
      assert.equal(item.range.end.line, 1, "a completion at the cursor replaces nothing before it");
    }
    if (fake) {
      assert.equal(items.length, 1);
      assert.equal(items[0].insertText, "fake");
    }
  });

  test("completion answers text edits", async () => {
    const result = await request("completion", () =>
      connection.sendRequest(CompletionRequest.type, {
        textDocument: { uri: ADD_URI },
        position: { line: 1, character: 4 },
      }),
    );
    const items = Array.isArray(result) ? result : (result?.items ?? []);
    for (const item of items) {
      assert.equal(typeof item.label, "string");
    }
    if (fake) {
      assert.equal(items.length, 1);
    }
  });

  test("dlm/fill replaces every hole marker", async () => {
    const edits = fillEdits(
      await request(FILL_METHOD, () => connection.sendRequest(FILL_METHOD, fillParams(HOLES_URI))),
    );
    assert.equal(edits.length, 2, `one edit per hole: ${JSON.stringify(edits)}`);
    const filled = applyEdits(HOLES_TEXT, edits);
    assert.ok(!filled.includes("<|hole|>"), `a marker is left:\n${filled}`);
    const lines = filled.split("\n");
    const body = (header: string) => lines[lines.indexOf(header) + 1] ?? "";
    assert.notEqual(body("def add(a, b):").trim(), "", `nothing filled in:\n${filled}`);
    assert.ok(filled.startsWith("def add(a, b):\n"), `text outside the holes changed:\n${filled}`);
    if (fake) {
      assert.equal(filled, HOLES_TEXT.replaceAll("<|hole|>", "pass"));
    }
  });

  test("the dlm.fill command fills the holes it is given", async () => {
    const hole = { start: { line: 1, character: 4 }, end: { line: 1, character: 12 } };
    const result = await request("executeCommand dlm.fill", () =>
      connection.sendRequest(ExecuteCommandRequest.type, {
        command: "dlm.fill",
        arguments: [fillParams(HOLES_URI, [hole])],
      }),
    );
    const edits = fillEdits(result);
    assert.equal(edits.length, 1, `one edit for one hole: ${JSON.stringify(edits)}`);
    assert.deepEqual(edits[0].range.start, hole.start);
    const filled = applyEdits(HOLES_TEXT, edits);
    assert.ok(filled.startsWith("def add(a, b):\n"), `text before the hole changed:\n${filled}`);
    assert.ok(filled.endsWith("def sub(a, b):\n    <|hole|>\n"), `the other hole was touched:\n${filled}`);
    if (fake) {
      assert.equal(filled, HOLES_TEXT.replace("<|hole|>", "pass"));
    }
  });

  test("dlm/status names the model and provider", async () => {
    const answer = await request(STATUS_METHOD, () => connection.sendRequest(STATUS_METHOD, {}));
    const status = asServerStatus(answer);
    assert.ok(status, `dlm/status did not answer {model, provider, lastLatencyMs, version}: ${JSON.stringify(answer)}`);
    assert.ok(status.model, `the server has no model: ${JSON.stringify(answer)}`);
    assert.match(status.provider ?? "", /^(CPU|CUDA)$/);
    assert.equal(typeof status.lastLatencyMs, "number", "a completion has run, so there is a latency");
  });

  test("shutdown and exit end the process", async () => {
    await request("shutdown", () => connection.sendRequest(ShutdownRequest.type));
    const exited = new Promise<number | null>((resolve) => {
      if (exitCode !== undefined) {
        resolve(exitCode);
      } else {
        server.on("exit", (code) => resolve(code));
      }
    });
    await connection.sendNotification(ExitNotification.type);
    const code = await request("exit", () => exited);
    assert.equal(code, 0, `server exit code ${code}; log:\n${stderr.slice(-4000)}`);
  });
});

describe("dlm-lsp with an older client", { skip: commandLine ? false : "DLM_LSP_COMMAND is not set" }, () => {
  test("initialize without general.positionEncodings (Neovim < 0.10, eglot) falls back to UTF-16", async () => {
    const [command, ...args] = parseCommandLine(commandLine ?? "");
    const server = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    server.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-8000);
    });
    const connection = createProtocolConnection(
      new StreamMessageReader(server.stdout),
      new StreamMessageWriter(server.stdin),
    );
    connection.listen();
    try {
      const result = await connection.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        rootUri: null,
        capabilities: {},
      });
      const encoding = result.capabilities.positionEncoding;
      assert.ok(encoding === undefined || encoding === "utf-16", `positionEncoding ${String(encoding)}`);
      await connection.sendNotification(InitializedNotification.type, {});
      await connection.sendRequest(ShutdownRequest.type);
    } catch (error) {
      throw new Error(`${String(error)}\nserver log:\n${stderr}`);
    } finally {
      await connection.sendNotification(ExitNotification.type).catch(() => undefined);
      connection.dispose();
      setTimeout(() => server.kill(), 2000).unref();
    }
  });
});
