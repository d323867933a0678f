"""Settings: one tree of fully defaulted, keyword-only dataclasses.

On the wire (initializationOptions, workspace/didChangeConfiguration) the settings are a
camelCase object, optionally under a "dlm" key. Inside they are snake_case. A bad value is
replaced by its default and reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .sampler import STRATEGIES
LOG_LEVELS = ("error", "warning", "info", "debug")
DEVICES = ("auto", "cpu", "cuda")
REMOTE_FALLBACKS = ("local", "empty")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a user can set. None means "the model card's recommendation"."""

    enable: bool = True  # serve completions at all
    languages: dict[str, bool] = field(default_factory=dict)  # per language id; missing = on
    model_dir: str | None = None  # a model directory; None = the model shipped in the package
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"
    threads: int = 0  # CPU threads for ONNX Runtime; 0 = one per physical core
    max_steps: int | None = None  # denoiser calls per request at most
    threshold: float | None = None  # commit masked positions at least this confident
    remask_floor: float | None = None  # re-mask committed tokens that fell below (0 = off)
    # "parallel"; "left_to_right": one token per step, as an AR decoder would; "speculative":
    # left to right, each step checking a drafted block in the same call; None: the model
    # card's recommendation
    strategy: str | None = None
    draft_length: int = 8  # speculative: tokens drafted (and checked in the same call) per step
    # speculative: where prompt lookup finds no draft, the model's trained feature drafter
    # guesses one (when the model has one); off: prompt lookup only. Off by default while
    # the shipped drafter is young: +0.1 tokens per call over lookup, 3-5 % more wall time
    # (benchmarks/speculative.py, model_export/README.md)
    feature_drafts: bool = False
    token_healing: bool = True  # back the context off to a token boundary at each hole
    # suffix-likelihood reranking (dlm_lsp.rerank): candidates per hole, scored with the code
    # after the hole (0 = off); for dlm/fill (other first tokens), and for inline completions
    # (a beam's best first lines: single-line exact match 12 -> 22 % on the held-out set)
    suffix_rerank: int = 2
    inline_suffix_rerank: int = 3
    # when the candidates above leave nothing to show (the greedy one only repeats the suffix,
    # or nothing of it parses in place): this many candidates, reranked the same way (0 = off)
    empty_rerank: int = 4
    # dlm/fill with a model that reads no suffix: the lines after the hole go ahead of the
    # prefix in its context, so that it knows the names they use
    suffix_first: bool = True
    # context budget before the cursor; None = the model's: all the context that the suffix
    # leaves for a causal model (its cached prefix costs almost nothing per keystroke), else 384
    prefix_tokens: int | None = None
    suffix_tokens: int = 128  # context budget after the cursor
    max_block_lines: int = 16  # most lines a block completion may have
    debounce_ms: int = 0  # wait this long before running the model; newer keystrokes win
    hole_marker: str = "<|hole|>"  # what dlm/fill treats as a hole when no ranges are given
    max_document_bytes: int = 8_000_000  # larger buffers are tracked but get no completions
    context_cache: bool = True  # keep each document's encoded context (causal models)
    context_cache_mb: int = 64  # memory for those contexts; least recently used go first
    log_level: str = "info"
    remote: str | None = None  # grpc://HOST:PORT of a Triton server (docs/TRITON.md); None = local
    remote_fallback: str = "local"  # when it cannot answer: the "local" model, or "empty" answers
    remote_timeout_ms: int = 10_000  # longest wait for one remote completion

    def model_key(self) -> tuple:
        """What decides which model is loaded and how: a change here means a reload."""
        return self.model_dir, self.device, self.threads, self.remote

    def language_enabled(self, language_id: str) -> bool:
        """Whether completions are on for this language."""
        return self.enable and self.languages.get(language_id, True)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _check(name: str, value: Any) -> Any:
    """Validate one field's value; raise ValueError with a reason when it is unusable."""
    if name in ("enable", "context_cache", "token_healing", "suffix_first", "feature_drafts"):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
    elif name == "languages":
        if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
            raise ValueError("expected an object of language id → true/false")
        value = {str(k): v for k, v in value.items()}
    elif name == "model_dir":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError("expected a directory path or null")
    elif name == "device":
        if value not in DEVICES:
            raise ValueError(f"expected one of {', '.join(DEVICES)}")
    elif name == "remote":
        if value is not None:
            from .remote.wire import parse_remote_url

            if not isinstance(value, str):
                raise ValueError("expected grpc://HOST:PORT or null")
            parse_remote_url(value)  # ValueError says why
    elif name == "remote_fallback":
        if value not in REMOTE_FALLBACKS:
            raise ValueError(f"expected one of {', '.join(REMOTE_FALLBACKS)}")
    elif name == "remote_timeout_ms":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("expected an integer ≥ 1")
    elif name == "strategy":
        if value is not None and value not in STRATEGIES:
            raise ValueError(f"expected one of {', '.join(STRATEGIES)}")
    elif name == "log_level":
        if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        value = value.lower()
    elif name == "hole_marker":
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty string")
    elif name in ("threshold", "remask_floor"):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError("expected a number between 0 and 1")
            if not 0.0 <= value <= 1.0:
                raise ValueError("expected a number between 0 and 1")
            value = float(value)
    elif name in ("max_steps", "prefix_tokens", "suffix_tokens", "max_block_lines",
                  "max_document_bytes", "threads", "debounce_ms", "context_cache_mb",
                  "draft_length", "suffix_rerank", "inline_suffix_rerank", "empty_rerank"):
        if value is None and name in ("max_steps", "prefix_tokens"):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        low = 0 if name in ("threads", "debounce_ms", "draft_length", "suffix_rerank",
                            "inline_suffix_rerank", "empty_rerank") else 1
        if value < low:
            raise ValueError(f"expected an integer ≥ {low}")
    return value


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Merge a wire settings object into `base`; return the settings and the problems found.

    Unknown keys and bad values are reported and ignored (the field keeps its base value).
    """
    base = base or Settings()
    problems: list[str] = []
    if raw is None:
        return base, problems
    if isinstance(raw, dict) and isinstance(raw.get("dlm"), dict):
        raw = raw["dlm"]
    if not isinstance(raw, dict):
        return base, [f"settings must be an object, got {type(raw).__name__}"]
    fields = {f.name for f in dataclasses.fields(Settings)}
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        name = _snake(str(key))
        if name not in fields:
            problems.append(f"unknown setting {key!r} ignored")
            continue
        if name == "model_dir" and value in (None, ""):
            continue  # "the default model": the one the server was started with
        try:
            changes[name] = _check(name, value)
        except ValueError as exc:
            problems.append(f"setting {_camel(name)}={value!r}: {exc}; keeping {getattr(base, name)!r}")
    return dataclasses.replace(base, **changes), problems


def settings_to_wire(settings: Settings) -> dict[str, Any]:
    """The settings as a camelCase object (for `dlm/status` and documentation)."""
    return {_camel(f.name): getattr(settings, f.name) for f in dataclasses.fields(settings)}
