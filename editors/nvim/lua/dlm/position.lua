-- LSP positions <-> Neovim byte columns, for any negotiated position encoding.
--
-- LSP counts a line's characters in UTF-16 code units unless the client and server agreed
-- on another encoding; Neovim counts bytes. vim.str_utfindex / vim.str_byteindex changed
-- their signatures in 0.11, so both forms are handled here, once.

local M = {}

local new_api = vim.fn.has("nvim-0.11") == 1

--- The LSP character index of byte column `byte_col` (0-based) in `line`.
---@param line string
---@param byte_col integer
---@param encoding string "utf-8"|"utf-16"|"utf-32"
---@return integer
function M.to_lsp_character(line, byte_col, encoding)
  byte_col = math.max(0, math.min(byte_col, #line))
  if encoding == "utf-8" then
    return byte_col
  end
  if new_api then
    return vim.str_utfindex(line, encoding, byte_col, false)
  end
  local utf32, utf16 = vim.str_utfindex(line, byte_col)
  return encoding == "utf-32" and utf32 or utf16
end

--- The byte column (0-based) of LSP character index `character` in `line`, clamped to it.
---@param line string
---@param character integer
---@param encoding string
---@return integer
function M.to_byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  if new_api then
    return vim.str_byteindex(line, encoding, character, false)
  end
  local ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  return ok and col or #line
end

--- The text of line `row` (0-based) of `bufnr`, "" past the end.
function M.line(bufnr, row)
  return vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
end

--- An LSP Position from a 0-based row and byte column.
function M.lsp_position(bufnr, row, byte_col, encoding)
  return { line = row, character = M.to_lsp_character(M.line(bufnr, row), byte_col, encoding) }
end

--- A 0-based {row, byte_col} from an LSP Position (rows past the end clamp to the end).
function M.buf_position(bufnr, position, encoding)
  local last = vim.api.nvim_buf_line_count(bufnr) - 1
  if position.line > last then
    return last, #M.line(bufnr, last)
  end
  return position.line, M.to_byte_col(M.line(bufnr, position.line), position.character, encoding)
end

--- Replaces an LSP range with `text`; returns the 0-based {row, byte_col} after the new text.
function M.replace(bufnr, range, text, encoding)
  local srow, scol = M.buf_position(bufnr, range.start, encoding)
  local erow, ecol = M.buf_position(bufnr, range["end"], encoding)
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, srow, scol, erow, ecol, lines)
  local end_row = srow + #lines - 1
  local end_col = (#lines == 1 and scol or 0) + #lines[#lines]
  return end_row, end_col
end

return M
