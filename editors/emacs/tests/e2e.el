;;; e2e.el --- dlm-eglot.el against a server, in Emacs batch mode  -*- lexical-binding: t; -*-
;;
;;   DLM_LSP_COMMAND='["/path/.venv/bin/dlm-lsp"]' emacs --batch -Q -l editors/emacs/tests/e2e.el
;;
;; Opens a Python file with <|hole|> markers, connects eglot, asks completion-at-point's
;; candidates, runs `dlm-fill-holes', and checks the buffer.  Prints DLM EMACS E2E OK.

(require 'json)
(dolist (dir (file-expand-wildcards "/usr/share/emacs/site-lisp/elpa/*"))
  (add-to-list 'load-path dir))
(add-to-list 'load-path (expand-file-name "editors/emacs"))
(require 'dlm-eglot)

(defun dlm-test-fail (fmt &rest args)
  (princ (concat "DLM EMACS E2E FAILED: " (apply #'format fmt args) "\n"))
  (kill-emacs 1))

(let* ((command (json-read-from-string (or (getenv "DLM_LSP_COMMAND") "null")))
       (fake (equal (getenv "DLM_LSP_FAKE") "1"))
       (dir (make-temp-file "dlm-emacs" t))
       (file (expand-file-name "holes.py" dir)))
  (unless (vectorp command) (dlm-test-fail "DLM_LSP_COMMAND must be a JSON array"))
  (setq dlm-server-command (append command nil))
  (with-temp-file (expand-file-name ".git" dir))  ; a project root
  (with-temp-file file
    (insert "def add(a, b):\n    <|hole|>\n\n\ndef sub(a, b):\n    <|hole|>\n"))
  (find-file file)
  (python-mode)
  (let ((eglot-sync-connect 60))
    (apply #'eglot--connect (eglot--guess-contact)))
  (unless (eglot-current-server) (dlm-test-fail "eglot did not connect"))
  (princ (format "connected: %s\n" (eglot--server-capable :inlineCompletionProvider)))
  ;; completion-at-point's candidates at the end of the first line's indentation
  (goto-char (point-min))
  (forward-line 1)
  (end-of-line)
  (let* ((capf (eglot-completion-at-point))
         (candidates (and capf (all-completions "" (nth 2 capf)))))
    (princ (format "completion candidates: %S\n" candidates))
    (when (and fake (null candidates)) (dlm-test-fail "no completion candidates")))
  (dlm-fill-holes)
  (let ((text (buffer-substring-no-properties (point-min) (point-max))))
    (princ (format "after dlm-fill-holes:\n%s\n" text))
    (when (string-match-p (regexp-quote "<|hole|>") text) (dlm-test-fail "a marker is left"))
    (unless (string-prefix-p "def add(a, b):\n" text) (dlm-test-fail "text before the hole changed"))
    (when (and fake (not (equal text "def add(a, b):\n    pass\n\n\ndef sub(a, b):\n    pass\n")))
      (dlm-test-fail "unexpected text")))
  (let ((eglot-autoshutdown t)) (eglot-shutdown (eglot-current-server)))
  (princ "DLM EMACS E2E OK\n")
  (kill-emacs 0))
