/**
 * The server's settings, read from the `dlm.*` configuration and sent to dlm-lsp as
 * `{"dlm": {...}}` (camelCase) in initializationOptions and workspace/didChangeConfiguration.
 *
 * Pure: no `vscode` import, so node's test runner can check it. A malformed value falls back
 * to its default and is reported in `problems`, never thrown.
 */

export interface ServerSettings {
  modelDir: string | null;
  maxSteps: number;
  threshold: number;
  languages: Record<string, boolean>;
  enable: boolean;
  holeMarker: string;
  logLevel: string;
}

export const DEFAULT_SETTINGS: Readonly<ServerSettings> = Object.freeze({
  modelDir: null,
  maxSteps: 8,
  threshold: 0.9,
  languages: {
    python: true,
    javascript: true,
    typescript: true,
    typescriptreact: true,
    javascriptreact: true,
    go: true,
    rust: true,
  },
  enable: true,
  holeMarker: "<|hole|>",
  logLevel: "info",
});

const LOG_LEVELS = ["debug", "info", "warning", "error"];

/** Reads one `dlm.<key>` value; `undefined` when unset. */
export type ConfigGetter = (key: string) => unknown;

export interface ReadSettings {
  settings: ServerSettings;
  /** One line per value that was ignored, for the output channel. */
  problems: string[];
}

/** Builds the server settings from configuration values, defaulting anything malformed. */
export function readServerSettings(get: ConfigGetter): ReadSettings {
  const problems: string[] = [];
  const pick = <T>(key: keyof ServerSettings, ok: (v: unknown) => boolean, fallback: T): T => {
    const value = get(key);
    if (value === undefined) {
      return fallback;
    }
    if (!ok(value)) {
      problems.push(`dlm.${key}: ignored ${JSON.stringify(value)}, using ${JSON.stringify(fallback)}`);
      return fallback;
    }
    return value as T;
  };
  const d = DEFAULT_SETTINGS;
  const modelDir = pick<string | null>(
    "modelDir",
    (v) => v === null || typeof v === "string",
    d.modelDir,
  );
  const settings: ServerSettings = {
    modelDir: modelDir === "" ? null : modelDir,
    maxSteps: pick("maxSteps", (v) => Number.isInteger(v) && (v as number) >= 1, d.maxSteps),
    threshold: pick(
      "threshold",
      (v) => typeof v === "number" && v >= 0 && v <= 1,
      d.threshold,
    ),
    languages: {
      ...d.languages,
      ...pick<Record<string, boolean>>("languages", isBooleanMap, {}),
    },
    enable: pick("enable", (v) => typeof v === "boolean", d.enable),
    holeMarker: pick("holeMarker", (v) => typeof v === "string" && v.length > 0, d.holeMarker),
    logLevel: pick("logLevel", (v) => typeof v === "string" && LOG_LEVELS.includes(v), d.logLevel),
  };
  return { settings, problems };
}

function isBooleanMap(value: unknown): boolean {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    Object.values(value).every((v) => typeof v === "boolean")
  );
}

/** The language ids to start the client for: those switched on. */
export function enabledLanguages(settings: ServerSettings): string[] {
  return Object.entries(settings.languages)
    .filter(([, on]) => on)
    .map(([id]) => id)
    .sort();
}

/** Whether a completion should be asked for in a document of `languageId`. */
export function completionsWanted(settings: ServerSettings, languageId: string): boolean {
  return settings.enable && settings.languages[languageId] === true;
}

/** The wire form: what initializationOptions and didChangeConfiguration carry. */
export function wireSettings(settings: ServerSettings): { dlm: ServerSettings } {
  return { dlm: settings };
}
