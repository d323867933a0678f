/**
 * The `dlm/fill` request: its parameters from editor selections, and a check of its answer.
 * Pure: ranges are plain LSP objects, not `vscode.Range`.
 */

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

export interface TextEdit {
  range: Range;
  newText: string;
}

export interface FillParams {
  textDocument: { uri: string };
  holes?: Range[];
}

export const FILL_METHOD = "dlm/fill";
export const STATUS_METHOD = "dlm/status";

function comparePositions(a: Position, b: Position): number {
  return a.line - b.line || a.character - b.character;
}

function isEmpty(r: Range): boolean {
  return comparePositions(r.start, r.end) === 0;
}

/**
 * The holes for "Rewrite selection": the non-empty selections, each with start before end,
 * in document order, overlapping ones merged (the server wants disjoint holes).
 */
export function selectionsToHoles(selections: Range[]): Range[] {
  const ordered = selections
    .filter((r) => !isEmpty(r))
    .map((r) => (comparePositions(r.start, r.end) <= 0 ? r : { start: r.end, end: r.start }))
    .sort((a, b) => comparePositions(a.start, b.start));
  const merged: Range[] = [];
  for (const r of ordered) {
    const last = merged[merged.length - 1];
    if (last && comparePositions(r.start, last.end) <= 0) {
      if (comparePositions(r.end, last.end) > 0) {
        last.end = r.end;
      }
    } else {
      merged.push({ start: { ...r.start }, end: { ...r.end } });
    }
  }
  return merged;
}

/** Parameters for `dlm/fill`: every marker when `holes` is undefined. */
export function fillParams(uri: string, holes?: Range[]): FillParams {
  return holes === undefined ? { textDocument: { uri } } : { textDocument: { uri }, holes };
}

function isPosition(v: unknown): v is Position {
  const p = v as Position;
  return typeof p === "object" && p !== null && Number.isInteger(p.line) && Number.isInteger(p.character);
}

/** The edits of a `dlm/fill` answer; throws when the answer is not `{edits: TextEdit[]}`. */
export function fillEdits(result: unknown): TextEdit[] {
  const edits = (result as { edits?: unknown } | null)?.edits;
  if (!Array.isArray(edits)) {
    throw new Error(`dlm/fill answered without edits: ${JSON.stringify(result)}`);
  }
  for (const e of edits) {
    const edit = e as TextEdit;
    if (
      typeof edit !== "object" ||
      edit === null ||
      typeof edit.newText !== "string" ||
      !isPosition(edit.range?.start) ||
      !isPosition(edit.range?.end)
    ) {
      throw new Error(`dlm/fill answered a malformed edit: ${JSON.stringify(e)}`);
    }
  }
  return edits as TextEdit[];
}

/**
 * Applies LSP text edits to a string (UTF-16 positions, which JS strings index natively).
 * Edits must not overlap; they are applied from the last to the first.
 */
export function applyEdits(text: string, edits: TextEdit[]): string {
  const lineStarts = [0];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "\n") {
      lineStarts.push(i + 1);
    }
  }
  const offset = (p: Position): number => {
    if (p.line >= lineStarts.length) {
      return text.length;
    }
    const lineEnd = p.line + 1 < lineStarts.length ? lineStarts[p.line + 1] - 1 : text.length;
    return Math.min(lineStarts[p.line] + p.character, lineEnd);
  };
  const sorted = [...edits].sort((a, b) => comparePositions(b.range.start, a.range.start));
  let out = text;
  for (const e of sorted) {
    out = out.slice(0, offset(e.range.start)) + e.newText + out.slice(offset(e.range.end));
  }
  return out;
}
