-- Calls on an LSP client object across Neovim versions: 0.11 made them methods
-- (client:request(...)) and deprecated the plain-function form (client.request(...)).

local M = {}

local methods = vim.fn.has("nvim-0.11") == 1

function M.request(client, method, params, handler, bufnr)
  if methods then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.cancel_request(client, id)
  if methods then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.notify(client, method, params)
  if methods then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

--- The dlm client attached to `bufnr`, or nil.
function M.for_buffer(bufnr, name)
  local clients
  if vim.lsp.get_clients then
    clients = vim.lsp.get_clients({ bufnr = bufnr, name = name })
  else
    clients = vim.tbl_values(vim.lsp.buf_get_clients(bufnr))
  end
  for _, client in ipairs(clients) do
    if client.name == name then
      return client
    end
  end
  return nil
end

return M
