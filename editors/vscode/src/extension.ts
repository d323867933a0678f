/**
 * The DLM extension: starts dlm-lsp through vscode-languageclient (which shows its inline
 * completions as ghost text), restarts it when it dies, and adds the fill / re-write /
 * toggle / status commands and a status-bar item.
 *
 * The logic worth testing lives in the pure modules next to this one; this file wires them
 * to VS Code.
 */

import * as fs from "fs";
import * as vscode from "vscode";
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";
import { FILL_METHOD, STATUS_METHOD, fillEdits, fillParams, selectionsToHoles, Range } from "./fill";
import { selectedPythonInterpreter } from "./pythonEnv";
import { RestartPolicy } from "./restartPolicy";
import { ServerCommand, resolveServerCommand } from "./serverCommand";
import {
  ServerSettings,
  completionsWanted,
  enabledLanguages,
  readServerSettings,
  wireSettings,
} from "./settings";
import { ConnectionState, ServerStatus, asServerStatus, statusBarView, statusReport } from "./status";

let controller: ServerController | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  controller = new ServerController();
  context.subscriptions.push(
    controller,
    vscode.commands.registerCommand("dlm.fillHoles", () => controller?.fill(false)),
    vscode.commands.registerCommand("dlm.rewriteSelection", () => controller?.fill(true)),
    vscode.commands.registerCommand("dlm.toggle", () => toggleCompletions()),
    vscode.commands.registerCommand("dlm.showStatus", () => controller?.showStatus()),
    vscode.commands.registerCommand("dlm.restart", () => controller?.restart()),
    vscode.commands.registerCommand("dlm.showLog", () => controller?.log.show()),
    vscode.workspace.onDidChangeConfiguration((e) => controller?.onConfigurationChanged(e)),
  );
  await controller.start();
}

export async function deactivate(): Promise<void> {
  await controller?.stop();
  controller = undefined;
}

async function toggleCompletions(): Promise<void> {
  const config = vscode.workspace.getConfiguration("dlm");
  await config.update("enable", !config.get<boolean>("enable", true), vscode.ConfigurationTarget.Global);
}

function currentSettings(log: vscode.LogOutputChannel): ServerSettings {
  const config = vscode.workspace.getConfiguration("dlm");
  const { settings, problems } = readServerSettings((key) => config.get(key));
  for (const problem of problems) {
    log.warn(problem);
  }
  return settings;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** One dlm-lsp process and everything that shows its state. */
class ServerController implements vscode.Disposable {
  readonly log: vscode.LogOutputChannel;
  private readonly statusItem: vscode.StatusBarItem;
  private readonly restarts = new RestartPolicy();
  private client: LanguageClient | undefined;
  private command: ServerCommand | undefined;
  private settings: ServerSettings;
  private state: ConnectionState = "stopped";
  private lastStatus: ServerStatus | undefined;
  private lastRoundTripMs: number | undefined;

  constructor() {
    this.log = vscode.window.createOutputChannel("DLM", { log: true });
    this.statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
    this.statusItem.command = "dlm.toggle";
    this.settings = currentSettings(this.log);
    this.render();
    this.statusItem.show();
  }

  async start(): Promise<void> {
    this.settings = currentSettings(this.log);
    this.command = await this.resolveCommand();
    this.log.info(`starting ${this.command.command} ${this.command.args.join(" ")} (from ${this.command.source})`);
    const serverOptions: ServerOptions = {
      command: this.command.command,
      args: this.command.args,
      transport: TransportKind.stdio,
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: enabledLanguages(this.settings).flatMap((language) => [
        { scheme: "file", language },
        { scheme: "untitled", language },
      ]),
      outputChannel: this.log,
      initializationOptions: () => wireSettings(this.settings),
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue }),
        closed: () => this.onServerClosed(),
      },
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (!completionsWanted(this.settings, document.languageId)) {
            return null;
          }
          const started = Date.now();
          const result = await next(document, position, context, token);
          if (!token.isCancellationRequested) {
            this.lastRoundTripMs = Date.now() - started;
            void this.refreshStatus();
          }
          return result;
        },
      },
    };
    const client = new LanguageClient("dlm", "DLM", serverOptions, clientOptions);
    this.client = client;
    client.onDidChangeState((e) => {
      this.state =
        e.newState === State.Running ? (this.settings.enable ? "running" : "disabled")
        : e.newState === State.Starting ? "starting"
        : "stopped";
      this.render();
    });
    this.state = "starting";
    this.render();
    try {
      await client.start();
      await this.refreshStatus();
    } catch (error) {
      this.state = "stopped";
      this.render();
      this.log.error(`dlm-lsp did not start: ${String(error)}`);
      void vscode.window
        .showErrorMessage(`DLM: could not start ${this.command.command}. Set "dlm.server.command".`, "Show log")
        .then((choice) => choice && this.log.show());
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop(2000);
      } catch (error) {
        this.log.warn(`stopping dlm-lsp: ${String(error)}`);
      }
    }
    this.state = "stopped";
    this.render();
  }

  async restart(): Promise<void> {
    this.restarts.reset();
    await this.stop();
    await this.start();
  }

  dispose(): void {
    void this.stop();
    this.statusItem.dispose();
    this.log.dispose();
  }

  async onConfigurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!e.affectsConfiguration("dlm")) {
      return;
    }
    if (e.affectsConfiguration("dlm.server") || e.affectsConfiguration("dlm.languages")) {
      // The command and the document selector are fixed when a client starts.
      await this.restart();
      return;
    }
    this.settings = currentSettings(this.log);
    if (this.client?.isRunning()) {
      this.state = this.settings.enable ? "running" : "disabled";
      await this.client.sendNotification(DidChangeConfigurationNotification.type, {
        settings: wireSettings(this.settings),
      });
    }
    this.render();
  }

  /** "Fill holes in file" (every marker) or "Rewrite selection" (the selections). */
  async fill(selectionOnly: boolean): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const client = this.client;
    if (!editor || !client?.isRunning()) {
      void vscode.window.showWarningMessage("DLM: no editor, or dlm-lsp is not running.");
      return;
    }
    const document = editor.document;
    let holes: Range[] | undefined;
    if (selectionOnly) {
      holes = selectionsToHoles(editor.selections.map((s) => client.code2ProtocolConverter.asRange(s)));
      if (holes.length === 0) {
        void vscode.window.showInformationMessage("DLM: select the code to re-write first.");
        return;
      }
    } else if (!document.getText().includes(this.settings.holeMarker)) {
      void vscode.window.showInformationMessage(`DLM: no ${this.settings.holeMarker} in this file.`);
      return;
    }
    const version = document.version;
    const params = fillParams(client.code2ProtocolConverter.asUri(document.uri), holes);
    const title = selectionOnly ? "DLM: re-writing the selection" : "DLM: filling holes";
    await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title, cancellable: true },
      async (_progress, token) => {
        try {
          const edits = fillEdits(await client.sendRequest(FILL_METHOD, params, token));
          if (token.isCancellationRequested) {
            return;
          }
          if (document.version !== version) {
            void vscode.window.showWarningMessage("DLM: the file changed while filling; nothing applied.");
            return;
          }
          const workspaceEdit = new vscode.WorkspaceEdit();
          workspaceEdit.set(document.uri, await client.protocol2CodeConverter.asTextEdits(edits));
          await vscode.workspace.applyEdit(workspaceEdit);
          void this.refreshStatus();
        } catch (error) {
          if (!token.isCancellationRequested) {
            this.log.error(`${FILL_METHOD}: ${String(error)}`);
            void vscode.window.showErrorMessage(`DLM: ${String(error)}`);
          }
        }
      },
    );
  }

  async showStatus(): Promise<void> {
    const status = await this.refreshStatus();
    if (status && this.command) {
      void vscode.window.showInformationMessage(statusReport(status, this.command.command));
    } else {
      void vscode.window.showWarningMessage("DLM: dlm-lsp is not running.", "Show log").then((c) => c && this.log.show());
    }
  }

  private async refreshStatus(): Promise<ServerStatus | undefined> {
    if (!this.client?.isRunning()) {
      return undefined;
    }
    try {
      const status = asServerStatus(await this.client.sendRequest(STATUS_METHOD, {}));
      if (status) {
        this.lastStatus = status;
      }
      this.render();
      return status;
    } catch (error) {
      this.log.warn(`${STATUS_METHOD}: ${String(error)}`);
      return undefined;
    }
  }

  private onServerClosed() {
    if (this.restarts.shouldRestart(Date.now())) {
      this.log.warn("dlm-lsp exited; restarting it");
      return { action: CloseAction.Restart, handled: true };
    }
    return {
      action: CloseAction.DoNotRestart,
      message: "dlm-lsp keeps exiting; not restarting it again. See the DLM output, then run 'DLM: Restart server'.",
    };
  }

  private async resolveCommand(): Promise<ServerCommand> {
    const config = vscode.workspace.getConfiguration("dlm.server");
    const resource = vscode.window.activeTextEditor?.document.uri ?? vscode.workspace.workspaceFolders?.[0]?.uri;
    return resolveServerCommand({
      configuredCommand: config.get<string>("command", ""),
      configuredArgs: config.get<string[]>("args", []),
      configuredPython: config.get<string>("pythonPath", ""),
      selectedPython: await selectedPythonInterpreter(resource, this.log),
      platform: process.platform,
      pathEnv: process.env.PATH ?? "",
      isExecutable,
    });
  }

  private render(): void {
    const state = this.state === "running" && !this.settings.enable ? "disabled" : this.state;
    const view = statusBarView(state, this.lastStatus, this.lastRoundTripMs);
    this.statusItem.text = view.text;
    this.statusItem.tooltip = view.tooltip;
    this.statusItem.command = state === "stopped" ? "dlm.showLog" : "dlm.toggle";
  }
}
