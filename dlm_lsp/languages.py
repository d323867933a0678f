"""Which tree-sitter grammar parses a buffer.

Grammars come from the per-language PyPI packages (`tree-sitter-python`, ...), which carry
compiled parsers and need no network. A language without a grammar is still served: the plan
falls back to indentation (`Syntax` is then None).
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

import tree_sitter

log = logging.getLogger(__name__)

# language id (LSP) → (module, function returning the language pointer)
_GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}

_EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascriptreact",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "typescriptreact",
    ".go": "go",
    ".rs": "rust",
}


@dataclass(frozen=True)
class Syntax:
    """A loaded grammar: its language id and a tree-sitter Language."""

    language_id: str
    language: tree_sitter.Language

    def parser(self) -> tree_sitter.Parser:
        """A new parser (parsers are not thread-safe: one per document or per call)."""
        return tree_sitter.Parser(self.language)


def language_id_for_path(path: str) -> str:
    """The LSP language id for a file name ("plaintext" when the extension is unknown)."""
    return _EXTENSIONS.get(PurePosixPath(path).suffix.lower(), "plaintext")


@functools.cache
def syntax_for(language_id: str) -> Syntax | None:
    """The grammar for an LSP language id, or None when there is none (indentation fallback)."""
    entry = _GRAMMARS.get(language_id)
    if entry is None:
        return None
    module_name, function = entry
    try:
        module = importlib.import_module(module_name)
        return Syntax(language_id, tree_sitter.Language(getattr(module, function)()))
    except (ImportError, AttributeError, ValueError) as exc:
        log.warning("grammar for %s unavailable (%s); planning by indentation", language_id, exc)
        return None


def supported_languages() -> list[str]:
    """Language ids with a grammar."""
    return sorted(_GRAMMARS)
