/**
 * Where the dlm-lsp executable is: the `dlm.server.*` settings first, then the Python
 * environment the Python extension selected, then `dlm-lsp` on PATH.
 *
 * Pure: the file system and environment come in as arguments so the order can be tested.
 */

import * as path from "path";

export interface ServerCommand {
  command: string;
  args: string[];
  /** Where the choice came from, for the log. */
  source: "setting" | "pythonPath" | "pythonExtension" | "PATH";
}

export interface ResolveInput {
  /** `dlm.server.command`: an executable path or name. */
  configuredCommand: string;
  /** `dlm.server.args`. */
  configuredArgs: string[];
  /** `dlm.server.pythonPath`. */
  configuredPython: string;
  /** The interpreter the Python extension has selected, if any. */
  selectedPython?: string;
  /** `process.platform`. */
  platform: string;
  /** `process.env.PATH`. */
  pathEnv: string;
  /** Whether a file exists and is executable. */
  isExecutable: (file: string) => boolean;
}

/** The server's executable name next to a Python interpreter (venv bin/ or Scripts/). */
export function scriptBesidePython(python: string, platform: string): string {
  const name = platform === "win32" ? "dlm-lsp.exe" : "dlm-lsp";
  const p = platform === "win32" ? path.win32 : path.posix;
  return p.join(p.dirname(python), name);
}

/** The first `name` found on PATH, or undefined. */
export function findOnPath(
  name: string,
  pathEnv: string,
  platform: string,
  isExecutable: (file: string) => boolean,
): string | undefined {
  const p = platform === "win32" ? path.win32 : path.posix;
  const sep = platform === "win32" ? ";" : ":";
  const names = platform === "win32" ? [`${name}.exe`, `${name}.cmd`, name] : [name];
  for (const dir of pathEnv.split(sep).filter((d) => d.length > 0)) {
    for (const candidate of names) {
      const file = p.join(dir, candidate);
      if (isExecutable(file)) {
        return file;
      }
    }
  }
  return undefined;
}

/** How to start the server. Never fails: the last resort is the bare name `dlm-lsp`. */
export function resolveServerCommand(input: ResolveInput): ServerCommand {
  const args = [...input.configuredArgs];
  if (input.configuredCommand.trim().length > 0) {
    return { command: input.configuredCommand.trim(), args, source: "setting" };
  }
  const pythons: [string | undefined, ServerCommand["source"]][] = [
    [input.configuredPython.trim() || undefined, "pythonPath"],
    [input.selectedPython, "pythonExtension"],
  ];
  for (const [python, source] of pythons) {
    if (!python) {
      continue;
    }
    const script = scriptBesidePython(python, input.platform);
    if (input.isExecutable(script)) {
      return { command: script, args, source };
    }
    if (source === "pythonPath") {
      // Named explicitly: trust it even without the console script beside it.
      return { command: python, args: ["-m", "dlm_lsp", ...args], source };
    }
  }
  const onPath = findOnPath("dlm-lsp", input.pathEnv, input.platform, input.isExecutable);
  return { command: onPath ?? "dlm-lsp", args, source: "PATH" };
}

/**
 * Parses a command line given as a JSON array (`["python", "-m", "dlm_lsp"]`) or as words
 * separated by spaces. Used by the tests' DLM_LSP_COMMAND.
 */
export function parseCommandLine(line: string): string[] {
  const trimmed = line.trim();
  if (trimmed.startsWith("[")) {
    const parsed: unknown = JSON.parse(trimmed);
    if (!Array.isArray(parsed) || !parsed.every((s) => typeof s === "string") || parsed.length === 0) {
      throw new Error(`not a command array: ${line}`);
    }
    return parsed as string[];
  }
  const words = trimmed.split(/\s+/).filter((w) => w.length > 0);
  if (words.length === 0) {
    throw new Error("empty command line");
  }
  return words;
}
