;;; dlm-eglot.el --- dlm-lsp through eglot: completions and hole filling  -*- lexical-binding: t; -*-

;; Load this file (or copy it into your init file) after eglot.  It registers dlm-lsp for
;; Python buffers and adds `dlm-fill-holes'.  Completions arrive through
;; `completion-at-point' (eglot has no ghost text).  Tested with Emacs 28.2 + eglot 1.9.

;;; Code:

(require 'eglot)

(defgroup dlm nil "Code completion from dlm-lsp." :group 'tools)

(defcustom dlm-server-command '("dlm-lsp")
  "How to start dlm-lsp."
  :type '(repeat string))

(defcustom dlm-settings '(:maxSteps 8 :threshold 0.9)
  "The server's settings, sent as {\"dlm\": ...}."
  :type 'plist)

(defun dlm-eglot-contact (&optional _interactive)
  "The eglot contact for dlm-lsp: its command and initializationOptions."
  (append dlm-server-command
          (list :initializationOptions (list :dlm dlm-settings))))

(add-to-list 'eglot-server-programs '((python-mode python-ts-mode) . dlm-eglot-contact))

(defun dlm-fill-holes ()
  "Replace every <|hole|> marker in the buffer with code from dlm-lsp."
  (interactive)
  (let* ((server (eglot--current-server-or-lose))
         (result (jsonrpc-request server :dlm/fill
                                  `(:textDocument ,(eglot--TextDocumentIdentifier)))))
    (eglot--apply-text-edits (plist-get result :edits))))

(provide 'dlm-eglot)
;;; dlm-eglot.el ends here
