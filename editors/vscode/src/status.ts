/**
 * What the status-bar item says, from the server's `dlm/status` answer and the client's own
 * measurement of the last completion. Pure.
 */

/** The `dlm/status` result (docs/INTERFACES.md). */
export interface ServerStatus {
  /** null while the server has no model (it failed to load: see `error`). */
  model: string | null;
  provider: string | null;
  lastLatencyMs: number | null;
  version: string;
  error?: string | null;
}

export type ConnectionState = "starting" | "running" | "stopped" | "disabled";

export interface StatusBarView {
  text: string;
  tooltip: string;
}

/** Checks a `dlm/status` answer; undefined when it is not one. */
export function asServerStatus(value: unknown): ServerStatus | undefined {
  if (typeof value !== "object" || value === null) {
    return undefined;
  }
  const v = value as Record<string, unknown>;
  const latency = v.lastLatencyMs;
  const stringOrNull = (x: unknown) => x === null || x === undefined || typeof x === "string";
  if (
    !stringOrNull(v.model) ||
    !stringOrNull(v.provider) ||
    typeof v.version !== "string" ||
    !(latency === null || latency === undefined || typeof latency === "number")
  ) {
    return undefined;
  }
  return {
    model: (v.model as string | undefined) ?? null,
    provider: (v.provider as string | undefined) ?? null,
    lastLatencyMs: typeof latency === "number" ? latency : null,
    version: v.version,
    error: typeof v.error === "string" ? v.error : null,
  };
}

/** A latency for people: `85 ms`, `1.2 s`. */
export function formatLatency(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) {
    return "–";
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * The status-bar text: state, the last completion's latency (the server's figure when it has
 * one, else the client's round trip) and the provider (CPU/CUDA).
 */
export function statusBarView(
  state: ConnectionState,
  status: ServerStatus | undefined,
  clientLatencyMs: number | undefined,
): StatusBarView {
  if (state === "starting") {
    return { text: "$(sync~spin) DLM", tooltip: "dlm-lsp is starting" };
  }
  if (state === "stopped") {
    return { text: "$(error) DLM", tooltip: "dlm-lsp is not running (click for the log)" };
  }
  if (status && status.model === null) {
    return { text: "$(warning) DLM · no model", tooltip: `dlm-lsp has no model: ${status.error ?? "unknown error"}` };
  }
  const icon = state === "disabled" ? "$(circle-slash)" : "$(sparkle)";
  const parts = ["DLM"];
  const latency = status?.lastLatencyMs ?? clientLatencyMs;
  if (latency !== undefined && latency !== null) {
    parts.push(formatLatency(latency));
  }
  if (status?.provider) {
    parts.push(status.provider);
  }
  const tooltip = [
    state === "disabled" ? "Completions off (click to toggle)" : "Completions on (click to toggle)",
    status ? `model ${status.model} · ${status.provider} · dlm-lsp ${status.version}` : undefined,
    clientLatencyMs !== undefined ? `last round trip ${formatLatency(clientLatencyMs)}` : undefined,
  ]
    .filter((line) => line !== undefined)
    .join("\n");
  return { text: `${icon} ${parts.join(" · ")}`, tooltip };
}

/** The multi-line text the "Show server status" command shows. */
export function statusReport(status: ServerStatus, command: string): string {
  if (status.model === null) {
    return `dlm-lsp ${status.version} has no model: ${status.error ?? "unknown error"}. Server: ${command}`;
  }
  const latency = status.lastLatencyMs === null ? "no completion yet" : formatLatency(status.lastLatencyMs);
  return `dlm-lsp ${status.version}: model ${status.model} on ${status.provider}; last completion ${latency}. Server: ${command}`;
}
