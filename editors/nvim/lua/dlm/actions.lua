-- The requests beyond completion: dlm/fill over the buffer's hole markers or over given
-- ranges (:DlmFill, :DlmRewrite), and dlm/status (:DlmStatus).

local lsp_client = require("dlm.client")
local position = require("dlm.position")

local M = {}

local function notify(msg, level)
  vim.notify("dlm: " .. msg, level or vim.log.levels.INFO)
end

--- Sends dlm/fill and applies its edits, unless the buffer changed meanwhile.
---@param client table
---@param bufnr integer
---@param holes table|nil LSP ranges; nil: every hole marker
---@param on_done function|nil called with (err, edits)
function M.fill(client, bufnr, holes, on_done)
  local params = { textDocument = { uri = vim.uri_from_bufnr(bufnr) }, holes = holes }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local encoding = client.offset_encoding or "utf-16"
  lsp_client.request(client, "dlm/fill", params, function(err, result)
    local function done(e, edits)
      if e then
        notify(tostring(type(e) == "table" and e.message or e), vim.log.levels.ERROR)
      end
      if on_done then
        on_done(e, edits)
      end
    end
    if err then
      return done(err)
    end
    if type(result) ~= "table" or type(result.edits) ~= "table" then
      return done("dlm/fill answered without edits")
    end
    if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return done("the buffer changed while filling; nothing applied")
    end
    vim.lsp.util.apply_text_edits(result.edits, bufnr, encoding)
    done(nil, result.edits)
  end, bufnr)
end

--- LSP ranges for lines `first`..`last` (1-based, inclusive), or for the last visual
--- selection when `visual` is true: whole lines for V, the characters for v, one range per
--- line for a block.
function M.selection_ranges(bufnr, first, last, encoding, visual)
  local mode = visual and vim.fn.visualmode() or "V"
  local ranges = {}
  if mode == "V" then
    local end_line = position.line(bufnr, last - 1)
    table.insert(ranges, {
      start = { line = first - 1, character = 0 },
      ["end"] = position.lsp_position(bufnr, last - 1, #end_line, encoding),
    })
    return ranges
  end
  local s = vim.api.nvim_buf_get_mark(bufnr, "<")
  local e = vim.api.nvim_buf_get_mark(bufnr, ">")
  -- A mark's column is the first byte of the last selected character: include that character.
  local function after_char(row, col)
    local line = position.line(bufnr, row)
    if col >= #line then
      return #line
    end
    return col + #vim.fn.strcharpart(line:sub(col + 1), 0, 1)
  end
  if mode == "v" then
    table.insert(ranges, {
      start = position.lsp_position(bufnr, s[1] - 1, s[2], encoding),
      ["end"] = position.lsp_position(bufnr, e[1] - 1, after_char(e[1] - 1, e[2]), encoding),
    })
  else -- block: the same byte columns on every line
    local lo, hi = math.min(s[2], e[2]), math.max(s[2], e[2])
    for row = s[1] - 1, e[1] - 1 do
      if #position.line(bufnr, row) > lo then
        table.insert(ranges, {
          start = position.lsp_position(bufnr, row, lo, encoding),
          ["end"] = position.lsp_position(bufnr, row, after_char(row, hi), encoding),
        })
      end
    end
  end
  return ranges
end

--- Asks dlm/status and hands {model, provider, lastLatencyMs, version} to `on_status`.
function M.status(client, bufnr, on_status)
  lsp_client.request(client, "dlm/status", {}, function(err, result)
    if err then
      notify("dlm/status: " .. tostring(err.message or err), vim.log.levels.ERROR)
      return
    end
    on_status(result)
  end, bufnr)
end

--- One line for people.
function M.format_status(status)
  -- JSON null arrives as vim.NIL: test types, not truthiness.
  if type(status.model) ~= "string" then
    return string.format("dlm-lsp %s has no model: %s", tostring(status.version), tostring(status.error))
  end
  local latency = type(status.lastLatencyMs) == "number" and string.format("%.0f ms", status.lastLatencyMs)
    or "no completion yet"
  return string.format(
    "dlm-lsp %s: model %s on %s; last completion %s",
    tostring(status.version),
    tostring(status.model),
    tostring(status.provider),
    latency
  )
end

return M
