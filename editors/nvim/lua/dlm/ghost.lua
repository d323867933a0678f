-- Ghost text for Neovim < 0.12: asks textDocument/inlineCompletion after a pause in typing,
-- draws the first suggestion with extmarks (virt_text on the cursor line, virt_lines below),
-- clears it when the cursor moves away, and accepts it on a mapping.
-- Neovim >= 0.12 has this built in (vim.lsp.inline_completion); see init.lua.

local lsp_client = require("dlm.client")
local position = require("dlm.position")

local M = {}

M.namespace = vim.api.nvim_create_namespace("dlm_ghost")

--- How many inlineCompletion answers have been handled (for tests and statuslines).
M.answered = 0

-- Per buffer: { timer, request_id, client_id, suggestion = {row, col, tick, item, encoding} }
local state = {}

local inline_virt_text = vim.fn.has("nvim-0.10") == 1

local function buffer_state(bufnr)
  state[bufnr] = state[bufnr] or {}
  return state[bufnr]
end

--- Removes the ghost text of `bufnr` and cancels its pending request.
function M.clear(bufnr)
  local s = state[bufnr]
  if not s then
    return
  end
  if s.timer then
    s.timer:stop()
  end
  if s.request_id and s.client_id then
    local client = vim.lsp.get_client_by_id(s.client_id)
    if client then
      lsp_client.cancel_request(client, s.request_id)
    end
  end
  s.request_id = nil
  s.suggestion = nil
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  end
end

--- Whether a suggestion is shown in `bufnr`.
function M.visible(bufnr)
  return state[bufnr] ~= nil and state[bufnr].suggestion ~= nil
end

--- The shown suggestion's item ({insertText, range}), or nil.
function M.current(bufnr)
  local s = state[bufnr]
  return s and s.suggestion and s.suggestion.item
end

--- The part of `item` still to be typed at byte column `col` of `row`, or nil when the
--- item does not continue what is there.
local function remaining_text(bufnr, item, row, col, encoding)
  local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
  if type(text) ~= "string" or text == "" then
    return nil
  end
  if not item.range then
    return text
  end
  local srow, scol = position.buf_position(bufnr, item.range.start, encoding)
  if srow ~= row or scol > col then
    return nil
  end
  local typed = position.line(bufnr, row):sub(scol + 1, col)
  if text:sub(1, #typed) ~= typed then
    return nil
  end
  return text:sub(#typed + 1)
end

local function draw(bufnr, row, col, text, hl)
  vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  local lines = vim.split(text, "\n", { plain = true })
  local opts = { hl_mode = "combine", priority = 200 }
  if lines[1] ~= "" then
    opts.virt_text = { { lines[1], hl } }
    if inline_virt_text then
      opts.virt_text_pos = "inline"
    elseif col >= #position.line(bufnr, row) then
      opts.virt_text_pos = "overlay"
    else
      opts.virt_text_pos = "eol"
    end
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i], hl } })
    end
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.namespace, row, col, opts)
end

--- Asks for a suggestion at `pos` ({row, col}, 0-based row and byte column; default: the
--- cursor) and draws it when it arrives, if the buffer and cursor have not moved on.
---@param opts table {client, hl, on_result = function(items)|nil}
function M.request(bufnr, pos, opts)
  M.clear(bufnr)
  local client = opts.client
  local encoding = client.offset_encoding or "utf-16"
  local row, col = pos[1], pos[2]
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = position.lsp_position(bufnr, row, col, encoding),
    context = { triggerKind = 2 }, -- Automatic
  }
  local s = buffer_state(bufnr)
  local ok, request_id
  ok, request_id = lsp_client.request(client, "textDocument/inlineCompletion", params, function(err, result)
    if s.request_id ~= request_id then
      return -- superseded or cleared
    end
    s.request_id = nil
    M.answered = M.answered + 1
    local items = {}
    if not err and result then
      items = result.items or result
    end
    if opts.on_result then
      opts.on_result(items, err)
    end
    if err or #items == 0 or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local text = remaining_text(bufnr, items[1], row, col, encoding)
    if text and text ~= "" then
      s.suggestion = { row = row, col = col, tick = tick, item = items[1], encoding = encoding }
      draw(bufnr, row, col, text, opts.hl or "Comment")
    end
  end, bufnr)
  if ok then
    s.request_id = request_id
    s.client_id = client.id
  end
end

--- Requests a suggestion at the cursor after `delay_ms` without typing.
function M.schedule(bufnr, delay_ms, opts)
  M.clear(bufnr)
  local s = buffer_state(bufnr)
  s.timer = s.timer or vim.loop.new_timer()
  s.timer:start(delay_ms, 0, vim.schedule_wrap(function()
    if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    if not vim.fn.mode():match("^i") then
      return
    end
    local cursor = vim.api.nvim_win_get_cursor(0)
    M.request(bufnr, { cursor[1] - 1, cursor[2] }, opts)
  end))
end

--- Inserts the shown suggestion and moves the cursor after it. Returns false when there is
--- nothing to accept, or the buffer changed under it.
function M.accept(bufnr)
  local s = state[bufnr]
  local suggestion = s and s.suggestion
  if not suggestion or vim.api.nvim_buf_get_changedtick(bufnr) ~= suggestion.tick then
    M.clear(bufnr)
    return false
  end
  local item = suggestion.item
  local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
  local range = item.range
  if not range then
    local here = position.lsp_position(bufnr, suggestion.row, suggestion.col, suggestion.encoding)
    range = { start = here, ["end"] = here }
  end
  M.clear(bufnr)
  local row, col = position.replace(bufnr, range, text, suggestion.encoding)
  for _, win in ipairs(vim.fn.win_findbuf(bufnr)) do
    vim.api.nvim_win_set_cursor(win, { row + 1, col })
  end
  return true
end

--- Clears the ghost text when the cursor leaves the place it was drawn at.
function M.on_cursor_moved(bufnr)
  local s = state[bufnr]
  if not (s and s.suggestion) then
    return
  end
  local cursor = vim.api.nvim_win_get_cursor(0)
  if cursor[1] - 1 ~= s.suggestion.row or cursor[2] ~= s.suggestion.col then
    M.clear(bufnr)
  end
end

--- Forgets `bufnr` (on unload).
function M.detach(bufnr)
  M.clear(bufnr)
  local s = state[bufnr]
  if s and s.timer then
    s.timer:close()
  end
  state[bufnr] = nil
end

return M
