-- Unit tests of the plugin's pure-ish helpers, in a headless Neovim with no server:
--
--   nvim --headless -u NONE -i NONE -c "luafile editors/nvim/tests/unit.lua"
--
-- Prints "DLM UNIT OK" and exits 0, or prints the failure and exits 1.

vim.opt.runtimepath:prepend(vim.fn.getcwd() .. "/editors/nvim")

local failures = {}

local function eq(actual, expected, what)
  if not vim.deep_equal(actual, expected) then
    table.insert(failures, string.format("%s: expected %s, got %s", what, vim.inspect(expected), vim.inspect(actual)))
  end
end

local function run()
  local position = require("dlm.position")
  local actions = require("dlm.actions")

  -- "aé😀中b": a(1 byte) é(2) 😀(4, two UTF-16 units) 中(3) b(1)
  local line = "aé😀中b"
  eq(position.to_lsp_character(line, 0, "utf-16"), 0, "utf-16 of byte 0")
  eq(position.to_lsp_character(line, 3, "utf-16"), 2, "utf-16 after é")
  eq(position.to_lsp_character(line, 7, "utf-16"), 4, "utf-16 after the emoji")
  eq(position.to_lsp_character(line, 10, "utf-16"), 5, "utf-16 after 中")
  eq(position.to_lsp_character(line, 7, "utf-32"), 3, "utf-32 after the emoji")
  eq(position.to_lsp_character(line, 7, "utf-8"), 7, "utf-8 is bytes")
  eq(position.to_lsp_character(line, 99, "utf-16"), 6, "past the end clamps")
  eq(position.to_byte_col(line, 4, "utf-16"), 7, "byte of utf-16 4")
  eq(position.to_byte_col(line, 3, "utf-32"), 7, "byte of utf-32 3")
  eq(position.to_byte_col(line, 99, "utf-16"), #line, "byte past the end clamps")

  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, { "x = '😀' + <|hole|>", "y" })
  local row, col = position.replace(buf, {
    start = { line = 0, character = 11 },
    ["end"] = { line = 0, character = 19 },
  }, "f(1,\n  2)", "utf-16")
  eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), { "x = '😀' + f(1,", "  2)", "y" }, "replace across lines")
  eq({ row, col }, { 1, 4 }, "position after the replacement")
  row, col = position.replace(buf, { start = { line = 2, character = 1 }, ["end"] = { line = 2, character = 1 } }, "z", "utf-16")
  eq(vim.api.nvim_buf_get_lines(buf, 2, 3, false), { "yz" }, "insert at a line end")
  eq({ row, col }, { 2, 2 }, "position after an insert")

  eq(actions.selection_ranges(buf, 1, 2, "utf-16", false), {
    { start = { line = 0, character = 0 }, ["end"] = { line = 1, character = 4 } },
  }, "line-wise range")

  eq(actions.format_status({ version = "0.1.0", model = "tiny", provider = "CPU", lastLatencyMs = 41.6 }),
    "dlm-lsp 0.1.0: model tiny on CPU; last completion 42 ms", "status line")
  eq(actions.format_status({ version = "0.1.0", model = "tiny", provider = "CPU", lastLatencyMs = vim.NIL }),
    "dlm-lsp 0.1.0: model tiny on CPU; last completion no completion yet", "status line with no latency")

  local dlm = require("dlm")
  dlm.setup({ filetypes = { "python" }, cmd = { "true" } })
  eq(vim.fn.exists(":DlmFill"), 2, ":DlmFill exists")
  eq(vim.fn.exists(":DlmRewrite"), 2, ":DlmRewrite exists")
  eq(vim.fn.exists(":DlmStatus"), 2, ":DlmStatus exists")
  eq(vim.fn.exists(":DlmToggle"), 2, ":DlmToggle exists")
  eq(dlm.config.ghost_text.debounce_ms, 150, "defaults kept by setup")
  eq(actions.format_status({ version = "0.1.0", model = vim.NIL, error = "no model.json" }),
    "dlm-lsp 0.1.0 has no model: no model.json", "status line without a model")
end

local ok, err = xpcall(run, debug.traceback)
if not ok then
  table.insert(failures, tostring(err))
end

if #failures == 0 then
  io.stdout:write("DLM UNIT OK\n")
  vim.cmd("qall!")
else
  io.stdout:write("DLM UNIT FAILED\n" .. table.concat(failures, "\n") .. "\n")
  vim.cmd("cquit 1")
end
