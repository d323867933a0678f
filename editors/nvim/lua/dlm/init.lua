-- dlm.nvim: multi-line completions from dlm-lsp (a masked-diffusion code model).
--
--   require("dlm").setup({ filetypes = { "python" } })
--
-- Starts dlm-lsp for the configured filetypes (vim.lsp.start on 0.8+, vim.lsp.start_client
-- on 0.7), shows its inline completions as ghost text (natively on 0.12+, with extmarks
-- before), sets omnifunc, and adds :DlmFill, :DlmRewrite, :DlmStatus, :DlmToggle.
-- See :help dlm.

local actions = require("dlm.actions")
local ghost = require("dlm.ghost")
local lsp_client = require("dlm.client")

local M = {}

local NAME = "dlm"

M.defaults = {
  -- How to start the server; a list. nil: "dlm-lsp" on PATH.
  cmd = nil,
  filetypes = { "python", "javascript", "typescript", "javascriptreact", "typescriptreact", "go", "rust" },
  -- Files that mark a project root (the server is shared by the buffers of one root).
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml" },
  -- Sent to the server as {"dlm": settings} in initializationOptions and
  -- workspace/didChangeConfiguration; nil values take the server's defaults.
  settings = {
    modelDir = nil,
    maxSteps = nil,
    threshold = nil,
    languages = nil,
    enable = true,
    holeMarker = "<|hole|>",
    logLevel = "info",
  },
  ghost_text = {
    enabled = true,
    debounce_ms = 150,
    hl_group = "Comment",
    -- "auto": Neovim's own vim.lsp.inline_completion where it exists (0.12+), else extmarks.
    native = "auto",
  },
  keymaps = {
    accept = "<Tab>", -- insert mode; falls through to the key when nothing is shown
    dismiss = "<C-]>",
  },
  omnifunc = true,
  on_attach = nil, -- function(client, bufnr)
}

M.config = vim.deepcopy(M.defaults)

-- client ids by root directory, for Neovim 0.7 where vim.lsp.start does not exist
local clients_by_root = {}

local function use_native()
  local native = M.config.ghost_text.native
  if native == "auto" then
    return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
  end
  return native == true
end

local function server_settings()
  return { dlm = vim.deepcopy(M.config.settings) }
end

local function find_root(bufnr)
  local name = vim.api.nvim_buf_get_name(bufnr)
  local dir = name ~= "" and vim.fn.fnamemodify(name, ":p:h") or vim.loop.cwd()
  if vim.fs and vim.fs.find then
    local found = vim.fs.find(M.config.root_markers, { path = dir, upward = true })[1]
    if found then
      return vim.fn.fnamemodify(found, ":h")
    end
    return dir
  end
  for _, marker in ipairs(M.config.root_markers) do
    local found = vim.fn.findfile(marker, dir .. ";")
    if found == "" then
      found = vim.fn.finddir(marker, dir .. ";")
    end
    if found ~= "" then
      return vim.fn.fnamemodify(found, ":p:h:h")
    end
  end
  return dir
end

--- The dlm client attached to `bufnr` (default: current), or nil.
function M.get_client(bufnr)
  return lsp_client.for_buffer(bufnr or vim.api.nvim_get_current_buf(), NAME)
end

local function accept_key(key, accept)
  local keys = vim.api.nvim_replace_termcodes(key, true, false, true)
  return function()
    if not accept() then
      vim.api.nvim_feedkeys(keys, "n", false)
    end
  end
end

local function attach_ghost_text(client, bufnr)
  local cfg = M.config
  local opts = { client = client, hl = cfg.ghost_text.hl_group }
  local group = vim.api.nvim_create_augroup("dlm_ghost_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd("TextChangedI", {
    group = group,
    buffer = bufnr,
    callback = function()
      if cfg.settings.enable ~= false then
        ghost.schedule(bufnr, cfg.ghost_text.debounce_ms, opts)
      end
    end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    buffer = bufnr,
    callback = function()
      ghost.on_cursor_moved(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      ghost.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("BufUnload", {
    group = group,
    buffer = bufnr,
    callback = function()
      ghost.detach(bufnr)
    end,
  })
  if cfg.keymaps.accept then
    vim.keymap.set("i", cfg.keymaps.accept, accept_key(cfg.keymaps.accept, function()
      return ghost.visible(bufnr) and ghost.accept(bufnr)
    end), { buffer = bufnr, desc = "dlm: accept the suggestion" })
  end
  if cfg.keymaps.dismiss then
    vim.keymap.set("i", cfg.keymaps.dismiss, function()
      ghost.clear(bufnr)
    end, { buffer = bufnr, desc = "dlm: dismiss the suggestion" })
  end
end

local function attach_native(bufnr)
  vim.lsp.inline_completion.enable(M.config.settings.enable ~= false, { bufnr = bufnr })
  local key = M.config.keymaps.accept
  if key then
    vim.keymap.set("i", key, accept_key(key, function()
      return vim.lsp.inline_completion.get({ bufnr = bufnr })
    end), { buffer = bufnr, desc = "dlm: accept the suggestion" })
  end
end

local function on_attach(client, bufnr)
  if M.config.omnifunc then
    vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
  end
  if M.config.ghost_text.enabled then
    if use_native() then
      attach_native(bufnr)
    else
      attach_ghost_text(client, bufnr)
    end
  end
  if M.config.on_attach then
    M.config.on_attach(client, bufnr)
  end
end

local function client_config(root)
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.textDocument = capabilities.textDocument or {}
  capabilities.textDocument.inlineCompletion = capabilities.textDocument.inlineCompletion
    or { dynamicRegistration = false }
  -- Neovim before 0.10 speaks UTF-16 only and does not say so (general.positionEncodings).
  capabilities.general = capabilities.general or {}
  capabilities.general.positionEncodings = capabilities.general.positionEncodings or { "utf-16" }
  return {
    name = NAME,
    cmd = M.config.cmd or { "dlm-lsp" },
    root_dir = root,
    workspace_folders = {
      { uri = vim.uri_from_fname(root), name = vim.fn.fnamemodify(root, ":t") },
    },
    capabilities = capabilities,
    init_options = server_settings(),
    settings = server_settings(),
    on_attach = on_attach,
  }
end

--- Starts (or reuses) the server for `bufnr` and attaches it.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if vim.bo[bufnr].buftype ~= "" then
    return
  end
  local root = find_root(bufnr)
  if vim.lsp.start then
    return vim.lsp.start(client_config(root), { bufnr = bufnr })
  end
  local id = clients_by_root[root]
  if not id or not vim.lsp.get_client_by_id(id) then
    id = vim.lsp.start_client(client_config(root))
    clients_by_root[root] = id
  end
  if id then
    vim.lsp.buf_attach_client(bufnr, id)
  end
  return id
end

--- Sends the current settings to every running dlm client.
function M.push_settings()
  local clients = vim.lsp.get_clients and vim.lsp.get_clients({ name = NAME }) or vim.lsp.get_active_clients()
  for _, client in ipairs(clients) do
    if client.name == NAME then
      client.config.settings = server_settings()
      lsp_client.notify(client, "workspace/didChangeConfiguration", { settings = server_settings() })
    end
  end
end

--- Switches completions on or off (tells the server too).
function M.toggle(enable)
  if enable == nil then
    enable = M.config.settings.enable == false
  end
  M.config.settings.enable = enable
  M.push_settings()
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    ghost.clear(bufnr)
    if use_native() and M.get_client(bufnr) then
      vim.lsp.inline_completion.enable(enable, { bufnr = bufnr })
    end
  end
  vim.notify("dlm: completions " .. (enable and "on" or "off"))
end

local function with_client(bufnr)
  local client = M.get_client(bufnr)
  if not client then
    vim.notify("dlm: no dlm-lsp attached to this buffer", vim.log.levels.WARN)
  end
  return client
end

--- Fills every hole marker of `opts.bufnr` (or the LSP ranges `opts.holes`).
function M.fill(opts)
  opts = opts or {}
  local bufnr = opts.bufnr or vim.api.nvim_get_current_buf()
  local client = with_client(bufnr)
  if client then
    actions.fill(client, bufnr, opts.holes, opts.on_done)
  end
end

--- Re-writes lines `first`..`last` or the last visual selection (`visual`).
function M.rewrite(opts)
  local bufnr = opts.bufnr or vim.api.nvim_get_current_buf()
  local client = with_client(bufnr)
  if client then
    local encoding = client.offset_encoding or "utf-16"
    local holes = actions.selection_ranges(bufnr, opts.first, opts.last, encoding, opts.visual)
    actions.fill(client, bufnr, holes, opts.on_done)
  end
end

--- Shows the server's model, provider and last latency.
function M.status(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = with_client(bufnr)
  if client then
    actions.status(client, bufnr, function(status)
      vim.notify(actions.format_status(status))
    end)
  end
end

local function create_commands()
  vim.api.nvim_create_user_command("DlmFill", function()
    M.fill()
  end, { desc = "dlm: fill every hole marker in the buffer" })
  vim.api.nvim_create_user_command("DlmRewrite", function(args)
    -- From visual mode the range is '<,'>: use the selection's exact extent.
    local visual = args.range == 2 and vim.fn.line("'<") == args.line1 and vim.fn.line("'>") == args.line2
    M.rewrite({ first = args.line1, last = args.line2, visual = visual })
  end, { range = true, desc = "dlm: re-write the selected code" })
  vim.api.nvim_create_user_command("DlmStatus", function()
    M.status()
  end, { desc = "dlm: model, provider and last latency" })
  vim.api.nvim_create_user_command("DlmToggle", function()
    M.toggle()
  end, { desc = "dlm: switch completions on or off" })
end

--- Configures the plugin; see :help dlm-setup.
function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  create_commands()
  local group = vim.api.nvim_create_augroup("dlm", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  -- Buffers opened before setup (lazy loading).
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(M.config.filetypes, vim.bo[bufnr].filetype) then
      M.attach(bufnr)
    end
  end
end

return M
