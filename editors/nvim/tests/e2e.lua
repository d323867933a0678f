-- End-to-end test of the dlm plugin in a real, headless Neovim against a real server:
--
--   DLM_LSP_COMMAND='["/path/.venv/bin/dlm-lsp"]' \
--     nvim --headless -u NONE -i NONE -c "luafile editors/nvim/tests/e2e.lua"
--
-- Run from the repository root. It opens Python buffers, lets setup() start the server on
-- FileType, requests a ghost-text suggestion and accepts it, fills the <|hole|> markers,
-- re-writes a line range, asks completion and status, and checks the buffers. With
-- DLM_LSP_FAKE=1 (tests/editors/fake_dlm_server.py) exact texts are asserted; the real tiny
-- model's text is not predictable, so against it only the shape of the result is.
-- Prints "DLM E2E OK" and exits 0, or prints the failure and exits 1.

local TIMEOUT_MS = tonumber(os.getenv("DLM_E2E_TIMEOUT_MS") or "90000")
local START_TIMEOUT_MS = 30000
local fake = os.getenv("DLM_LSP_FAKE") == "1"
local steps = {}

local function say(msg)
  io.stdout:write(msg .. "\n")
  io.stdout:flush()
end

local function wait_for(what, predicate, timeout_ms)
  if not vim.wait(timeout_ms or TIMEOUT_MS, predicate, 20) then
    error("timed out waiting for " .. what, 2)
  end
end

local function assert_eq(actual, expected, what)
  if actual ~= expected then
    error(string.format("%s: expected %s, got %s", what, vim.inspect(expected), vim.inspect(actual)), 2)
  end
end

local function buffer_text(bufnr)
  return table.concat(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n")
end

local function parse_command(line)
  assert(line and line ~= "", "DLM_LSP_COMMAND is not set")
  if line:sub(1, 1) == "[" then
    return vim.fn.json_decode(line)
  end
  return vim.split(vim.trim(line), "%s+")
end

local function step(name, fn)
  local started = vim.loop.hrtime()
  fn()
  table.insert(steps, string.format("ok %s (%.0f ms)", name, (vim.loop.hrtime() - started) / 1e6))
  say(steps[#steps])
end

local function open_python(dir, name, lines)
  local path = dir .. "/" .. name
  vim.fn.writefile(lines, path)
  vim.cmd("edit " .. vim.fn.fnameescape(path))
  local bufnr = vim.api.nvim_get_current_buf()
  assert_eq(vim.bo[bufnr].filetype, "python", "filetype of " .. name)
  return bufnr
end

local function run()
  local root = vim.fn.getcwd()
  vim.opt.runtimepath:prepend(root .. "/editors/nvim")
  vim.cmd("filetype on")
  vim.o.swapfile = false
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, "p")
  vim.fn.writefile({}, dir .. "/.git") -- a root marker: one server for the test's files

  local dlm = require("dlm")
  dlm.setup({
    cmd = parse_command(os.getenv("DLM_LSP_COMMAND")),
    filetypes = { "python" },
    settings = { maxSteps = 4 },
    ghost_text = { debounce_ms = 10 },
  })
  say("nvim " .. tostring(vim.version().major) .. "." .. tostring(vim.version().minor)
    .. (fake and ", fake server" or ", real server"))

  local add = open_python(dir, "add.py", { "def add(a, b):", "    " })
  local client
  step("the server starts on FileType and initializes", function()
    wait_for("a dlm client on the buffer", function()
      client = dlm.get_client(add)
      return client ~= nil and client.server_capabilities ~= nil
    end, START_TIMEOUT_MS)
    assert(client.server_capabilities.inlineCompletionProvider, "no inlineCompletionProvider")
    assert_eq(vim.bo[add].omnifunc, "v:lua.vim.lsp.omnifunc", "omnifunc")
  end)

  local ghost = require("dlm.ghost")
  step("inline completion: ghost text drawn with extmarks, accepted into the buffer", function()
    local items
    ghost.request(add, { 1, 4 }, {
      client = client,
      on_result = function(result)
        items = result
      end,
    })
    wait_for("the inlineCompletion answer", function()
      return items ~= nil
    end)
    for _, item in ipairs(items) do
      assert(type(item.insertText) == "string", "an item without insertText")
      assert(item.range, "an item without a range")
    end
    if fake then
      assert_eq(#items, 1, "number of items")
    end
    local usable = #items > 0 and items[1].insertText ~= ""
    if not usable then
      say("  (the model suggested nothing here; nothing to accept)")
      return
    end
    assert(ghost.visible(add), "a suggestion arrived but no ghost text is shown")
    local marks = vim.api.nvim_buf_get_extmarks(add, ghost.namespace, 0, -1, { details = true })
    assert_eq(#marks, 1, "ghost extmarks")
    local expected = "def add(a, b):\n    " .. items[1].insertText
    assert(ghost.accept(add), "accept refused")
    assert_eq(buffer_text(add), expected, "buffer after accepting")
    assert(not ghost.visible(add), "ghost text left after accepting")
    if fake then
      assert_eq(buffer_text(add), "def add(a, b):\n    fake", "buffer after accepting (fake)")
    end
  end)

  step("typing in insert mode: ghost text after the debounce, <Tab> accepts it", function()
    local typed = open_python(dir, "typed.py", { "def add(a, b):", "    " })
    wait_for("the client on typed.py", function()
      return dlm.get_client(typed) ~= nil
    end, START_TIMEOUT_MS)
    vim.api.nvim_win_set_cursor(0, { 2, 4 })
    local shown, deadline = nil, vim.loop.now() + TIMEOUT_MS
    local answered = ghost.answered
    local timer = vim.loop.new_timer()
    timer:start(20, 20, vim.schedule_wrap(function()
      if shown ~= nil then
        return
      end
      -- Done when the ghost text shows, or an answer came and drew nothing.
      local settled = ghost.answered > answered
      if ghost.visible(typed) or settled or vim.loop.now() > deadline then
        shown = ghost.visible(typed)
        timer:stop()
        local keys = shown and "<Tab><Esc>" or "<Esc>"
        vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "t", false)
      end
    end))
    -- "x!" runs the keys and stays in insert mode until the timer above leaves it.
    vim.api.nvim_feedkeys("Ax", "tx!", false)
    timer:close()
    local line = vim.api.nvim_buf_get_lines(typed, 1, 2, false)[1]
    if fake then
      assert(shown, "no ghost text appeared while typing")
      assert_eq(line, "    xfake", "line after <Tab>")
    elseif shown then
      assert(#line > #"    x", "<Tab> did not insert the suggestion: " .. line)
    else
      say("  (the model suggested nothing while typing)")
    end
    assert(not ghost.visible(typed), "ghost text left after leaving insert mode")
  end)

  step("completion (omnifunc's request) answers items", function()
    local responses = vim.lsp.buf_request_sync(add, "textDocument/completion", {
      textDocument = { uri = vim.uri_from_bufnr(add) },
      position = { line = 0, character = 14 },
    }, TIMEOUT_MS)
    assert(responses, "no completion answer")
    for _, response in pairs(responses) do
      assert(not response.err, "completion error: " .. vim.inspect(response.err))
    end
  end)

  local holes = open_python(dir, "holes.py", { "def add(a, b):", "    <|hole|>", "", "", "def sub(a, b):", "    <|hole|>" })
  wait_for("the client on the second buffer", function()
    return dlm.get_client(holes) ~= nil
  end)
  step(":DlmFill replaces every hole marker", function()
    local done, err
    dlm.fill({ bufnr = holes, on_done = function(e) done, err = true, e end })
    wait_for("the dlm/fill answer", function()
      return done
    end)
    assert(not err, "dlm/fill failed: " .. vim.inspect(err))
    local lines = vim.api.nvim_buf_get_lines(holes, 0, -1, false)
    local text = table.concat(lines, "\n")
    assert(not text:find("<|hole|>", 1, true), "a marker is left:\n" .. text)
    assert_eq(lines[1], "def add(a, b):", "the line before the hole")
    assert(vim.trim(lines[2]) ~= "", "nothing filled into the first hole:\n" .. text)
    assert(text:find("def sub(a, b):", 1, true), "text between the holes lost:\n" .. text)
    if fake then
      assert_eq(text, "def add(a, b):\n    pass\n\n\ndef sub(a, b):\n    pass", "filled buffer (fake)")
    end
  end)

  step(":DlmRewrite re-writes a line range", function()
    local before = vim.api.nvim_buf_get_lines(holes, 0, 1, false)[1]
    local done, err
    dlm.rewrite({ bufnr = holes, first = 2, last = 2, on_done = function(e) done, err = true, e end })
    wait_for("the dlm/fill answer", function()
      return done
    end)
    assert(not err, "re-write failed: " .. vim.inspect(err))
    assert_eq(vim.api.nvim_buf_get_lines(holes, 0, 1, false)[1], before, "the line before the range")
    if fake then
      assert_eq(buffer_text(holes), "def add(a, b):\npass\n\n\ndef sub(a, b):\n    pass", "re-written buffer (fake)")
    end
    -- The command itself parses its range and reaches the server too.
    vim.cmd("2DlmRewrite")
  end)

  step(":DlmStatus's request names the provider", function()
    local status
    require("dlm.actions").status(client, holes, function(s)
      status = s
    end)
    wait_for("the dlm/status answer", function()
      return status ~= nil
    end)
    assert(status.provider == "CPU" or status.provider == "CUDA", "provider: " .. vim.inspect(status))
    say("  " .. require("dlm.actions").format_status(status))
  end)

  step("the server stops with the client", function()
    vim.lsp.stop_client(client.id)
    wait_for("the client to stop", function()
      return vim.lsp.get_client_by_id(client.id) == nil
    end)
  end)
end

local ok, err = xpcall(run, debug.traceback)
if ok then
  say("DLM E2E OK")
  vim.cmd("qall!")
else
  say("DLM E2E FAILED: " .. tostring(err))
  local log = vim.lsp.get_log_path and vim.lsp.get_log_path()
  if log and vim.fn.filereadable(log) == 1 then
    say("--- tail of " .. log)
    for _, line in ipairs(vim.fn.readfile(log, "", -40)) do
      say(line)
    end
  end
  vim.cmd("cquit 1")
end
