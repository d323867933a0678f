"""The model card: `model.json`, the contract between `model_export` and the runtime.

A model directory holds::

    model.json       this card
    tokenizer.json   a `tokenizers` byte-level BPE with the special tokens named below
    *.onnx           the encoder/decoder graphs named under "graphs"
    weights.bin      (format 2) every graph's weights, each stored once, as ONNX external data

Graph signatures (names are the contract, and are the constants below; the design note's
section "The model contract" says why there are two graphs):

* encoder: ``input_ids[B,S] int64``, ``position_ids[B,S] int64``, ``attention_mask[B,S] int64``
  → ``keys[L,B,H,S,D]``, ``values[L,B,H,S,D]`` (float32, or float16 in a fp16 variant).
  A causal model's encoder (format 2, ``context_attention: "causal"``) also takes the context
  encoded so far: ``past_keys[L,B,H,P,D]``, ``past_values``, ``past_mask[B,P] int64`` (P may be
  0); the S new tokens attend to the past and causally to each other, and the outputs hold the
  new tokens' keys/values only, to be appended to the past.
* decoder: ``canvas_ids[B,C] int64``, ``canvas_position_ids[B,C] int64``, ``keys``, ``values``,
  ``context_mask[B,S] int64`` (and, format 2, ``canvas_mask[B,C] bool``: which canvas positions
  are real when a batch pads canvases) → ``pred_ids[B,C] int64`` (argmax), ``pred_prob[B,C]
  float32`` (its probability), ``canvas_prob[B,C] float32`` (the probability of the token
  *already* at each canvas position, used for self-correction), and ``logits[B,C,V]``
  (evaluation only).
* one graph (the shipped model): a buffered fused decoder (per-layer key/value buffers, and
  ``predict_rows``: the canvas positions whose predictions a call returns) named as both the
  encoder and the decoder; it encodes a context by calls that predict nothing
  (`GraphFiles.one_graph`, `PREDICT_ROWS`).

Format 1 cards (no ``context_attention``) are bidirectional: the context is encoded whole.

A card's ``drafter`` block (`DrafterCard`) says what drafts for the speculative strategy: prompt
lookup (no graph), or a trained feature drafter, ``drafter.onnx`` (model_export/drafter_export.py):
``features[1,N,K·d]`` (the target's `FEATURES` of N new context positions),
``feature_position_ids[1,N] int64``, ``past_drafter_keys``/``past_drafter_values``
``[n_layers,1,H,P,D]`` (P may be 0), ``anchor_ids[1,1] int64``, ``anchor_position_ids[1,1]
int64`` → ``draft_ids[1,B-1] int64``, ``draft_prob[1,B-1] float32``, ``drafter_keys``/
``drafter_values`` ``[n_layers,1,H,N,D]`` (the new positions', to append to the cache).

How context and canvas are laid out in positions is `dlm_lsp.layout`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FORMAT = 2  # what model_export writes; the runtime reads 1 and 2
CARD_FORMATS = (1, 2)
CONTEXT_ATTENTION = ("causal", "bidirectional")
CANVAS_ATTENTION = ("bidirectional", "causal")

# The graphs' input and output names: the export writes them, the runtimes bind them.
ENCODER_INPUTS = ("input_ids", "position_ids", "attention_mask")
PAST_INPUTS = ("past_keys", "past_values", "past_mask")  # format 2, causal models only
ENCODER_OUTPUTS = ("keys", "values")
DECODER_INPUTS = ("canvas_ids", "canvas_position_ids", "keys", "values", "context_mask")
CANVAS_MASK = "canvas_mask"  # format 2 decoders: which canvas positions of a batch are real
DECODER_OUTPUTS = ("pred_ids", "pred_prob", "canvas_prob")
LOGITS = "logits"  # the decoder's extra output, for evaluation
# a fused decoder's optional outputs (model_export/fused.py): its inputs' own keys/values
# (L,B,H,C,D), so committed canvas tokens can join the context without an encoder call
CANVAS_KEYS, CANVAS_VALUES = "canvas_keys", "canvas_values"
# fused graphs' optional output for a feature drafter: the residual streams of the drafter's
# target layers (B,T,K·d), for every input token (context in the encoder, canvas in the decoder)
FEATURES = "features"
# a feature drafter's graph (DrafterCard.graph)
DRAFTER_INPUTS = ("features", "feature_position_ids", "past_drafter_keys", "past_drafter_values",
                  "anchor_ids", "anchor_position_ids")
DRAFTER_OUTPUTS = ("draft_ids", "draft_prob", "drafter_keys", "drafter_values")
# decoder metadata: "1" when the graph takes one request per call (GroupQueryAttention
# takes several new tokens on a past only at batch 1); a batch then runs row by row
ROWS_PER_CALL = "dlm.rows_per_call"
# a buffered fused decoder's input: the canvas positions (R,) int64 whose predictions the
# call returns (its outputs are then [B,R]); none for a call that only encodes context into
# the buffers, so one graph (and one session, one copy of the prepacked weights) both
# encodes and decodes (the card then names the same file as encoder and decoder)
PREDICT_ROWS = "predict_rows"

DEFAULT_CANVAS_BUCKETS = (16, 32, 64, 128)  # what training cuts canvases to unless told


class ModelError(Exception):
    """A model directory that cannot be used: missing, corrupt, or inconsistent."""


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    """Ids of the tokens the sampler and the layout need by name."""

    pad: int  # fills batch rows; never attended to
    mask: int  # a canvas position still to be predicted
    end_of_span: int  # closes a canvas: everything from the first one is dropped
    file: int  # first context token (start of the window); keeps the context non-empty

    @property
    def never_predicted(self) -> tuple[int, int, int]:
        """Ids a prediction may never be (the decoder bans them): mask, pad and file."""
        return (self.mask, self.pad, self.file)


@dataclass(frozen=True, kw_only=True)
class SamplerDefaults:
    """Recommended sampler settings; every field may be overridden by the user."""

    threshold: float = 0.9  # commit every masked position whose probability reaches this
    max_steps: int = 32  # hard cap on denoiser calls per request
    remask_floor: float = 0.0  # re-mask committed tokens whose probability fell below (0 = off)
    # or "left_to_right" (one commit per step: an AR model as it is), or "speculative" (left to
    # right, each call also checking a drafted block)
    strategy: str = "parallel"


@dataclass(frozen=True, kw_only=True)
class GraphFiles:
    """One runnable variant of the model (fp32 for CPU, fp16 for CUDA, ...)."""

    encoder: str
    decoder: str
    dtype: str = "float32"  # dtype of keys/values

    @property
    def one_graph(self) -> bool:
        """The decoder is also the encoder (a buffered decoder with `PREDICT_ROWS`)."""
        return self.encoder == self.decoder


@dataclass(frozen=True, kw_only=True)
class DrafterCard:
    """The card's ``drafter`` block: what drafts for the speculative strategy. ``graph`` None
    is prompt lookup (training-free); a graph is a feature drafter reading the target's
    `FEATURES` of ``target_layers`` and guessing ``block_size - 1`` tokens after an anchor."""

    kind: str
    trained: bool = False
    graph: str | None = None  # drafter.onnx: DRAFTER_INPUTS → DRAFTER_OUTPUTS
    target_layers: tuple[int, ...] = ()  # 0: the embedding, l: after block l
    block_size: int = 0  # anchor + guessed tokens
    n_layers: int = 0  # drafter layers (the first axis of its key/value cache)
    params: int = 0
    training_tokens: int = 0
    training_minutes: float = 0.0
    tau: dict[str, Any] | None = None  # tokens per target call, as measured (where, how)


def _drafter_card(raw: Any, where: str, n_layers: int) -> DrafterCard | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise ModelError(f"{where}: drafter must be an object with a 'kind'")
    graph = raw.get("graph")
    if graph is not None and not isinstance(graph, str):
        raise ModelError(f"{where}: drafter graph must name a file")
    layers = raw.get("target_layers", [])
    if not isinstance(layers, list) or any(not isinstance(x, int) or isinstance(x, bool)
                                           or not 0 <= x <= n_layers for x in layers):
        raise ModelError(f"{where}: drafter target_layers must be layers 0..{n_layers}")
    numbers = {}
    for name, kind in (("block_size", int), ("n_layers", int), ("params", int),
                       ("training_tokens", int), ("training_minutes", (int, float))):
        value = raw.get(name, 0)
        if not isinstance(value, kind) or isinstance(value, bool) or value < 0:
            raise ModelError(f"{where}: drafter {name} must be a non-negative number")
        numbers[name] = value
    if graph is not None and (not layers or numbers["block_size"] < 2 or not numbers["n_layers"]):
        raise ModelError(f"{where}: a drafter graph needs target_layers, block_size >= 2 and "
                         "n_layers")
    tau = raw.get("tau")
    if tau is not None and not isinstance(tau, dict):
        raise ModelError(f"{where}: drafter tau must be an object")
    return DrafterCard(kind=raw["kind"], trained=bool(raw.get("trained", False)), graph=graph,
                       target_layers=tuple(layers), tau=tau,
                       training_minutes=float(numbers.pop("training_minutes")), **numbers)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """Everything the runtime needs to know about a model directory."""

    name: str
    version: str
    vocab_size: int
    n_layers: int
    n_heads: int
    head_dim: int
    special_tokens: SpecialTokens
    canvas_buckets: tuple[int, ...]  # static canvas lengths, ascending
    max_context: int  # most context tokens (prefix + suffix + the file token) per request
    max_position: int  # position ids must stay below this
    sampler: SamplerDefaults
    graphs: dict[str, GraphFiles]  # by provider: "cpu" required, "cuda" optional
    tokenizer: str = "tokenizer.json"
    context_attention: str = "bidirectional"  # "causal": an encoded context can be extended
    n_kv_heads: int = 0  # key/value heads (H of keys[L,B,H,S,D]); 0: as many as n_heads
    # how canvas tokens see each other: "bidirectional" (a denoiser) or "causal" (an imported
    # autoregressive model served as it is); the decoder graph applies it
    canvas_attention: str = "bidirectional"
    # predictions shifted by one, as in an AR model: the output at position i predicts token
    # i+1, so each hole's canvas is fed the token before it (`layout.decoder_inputs`)
    shift: bool = False
    reads_suffix: bool = True  # False: the model never saw text after a hole (a plain AR model)
    weights: str | None = None  # the graphs' shared external-data file (format 2)
    # what drafts for the speculative strategy (parsed from extra["drafter"], which keeps
    # the block as written)
    drafter: DrafterCard | None = field(default=None, compare=False)
    directory: Path = field(default=Path("."), compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # training, corpus, ...

    def path(self, name: str) -> Path:
        """A file of this model directory."""
        return self.directory / name

    @property
    def kv_heads(self) -> int:
        """Heads of the encoded context's keys/values (grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def causal(self) -> bool:
        """Whether context keys/values of an unchanged head of the context stay exact."""
        return self.context_attention == "causal"

    def graphs_for(self, provider: str) -> GraphFiles:
        """The graph variant for a provider ("cuda" or "cpu"), falling back to the CPU one."""
        return self.graphs.get(provider) or self.graphs["cpu"]

    def bucket_for(self, length: int) -> int:
        """The smallest canvas bucket that holds `length` tokens (the largest if none does)."""
        for bucket in self.canvas_buckets:
            if bucket >= length:
                return bucket
        return self.canvas_buckets[-1]

    def to_json(self) -> dict[str, Any]:
        """The card as written to model.json."""
        out: dict[str, Any] = {
            "format": CARD_FORMAT,
            "name": self.name,
            "version": self.version,
            "architecture": {
                "vocab_size": self.vocab_size,
                "n_layers": self.n_layers,
                "n_heads": self.n_heads,
                "head_dim": self.head_dim,
            },
            "special_tokens": vars(self.special_tokens),
            "canvas_buckets": list(self.canvas_buckets),
            "max_context": self.max_context,
            "max_position": self.max_position,
            "sampler": vars(self.sampler),
            "graphs": {k: vars(v) for k, v in self.graphs.items()},
            "tokenizer": self.tokenizer,
            "context_attention": self.context_attention,
            "canvas_attention": self.canvas_attention,
            "shift": self.shift,
            "reads_suffix": self.reads_suffix,
        }
        if self.n_kv_heads:
            out["architecture"]["n_kv_heads"] = self.n_kv_heads
        if self.weights is not None:
            out["weights"] = self.weights
        if self.drafter is not None and "drafter" not in self.extra:
            out["drafter"] = {k: list(v) if isinstance(v, tuple) else v
                              for k, v in vars(self.drafter).items()}
        for key, value in self.extra.items():
            if key == "architecture":
                out["architecture"] = {**value, **out["architecture"]}
            elif key not in out:
                out[key] = value
        return out


def _require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise ModelError(f"{where}: missing field {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def parse_card(raw: Any, directory: Path) -> ModelCard:
    """Validate a decoded model.json; raise ModelError naming the first problem."""
    where = str(directory / "model.json")
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: not a JSON object")
    card_format = raw.get("format", 1)
    if card_format not in CARD_FORMATS:
        raise ModelError(f"{where}: card format {card_format!r}, expected one of {CARD_FORMATS}")
    attention = raw.get("context_attention", "bidirectional")
    if attention not in CONTEXT_ATTENTION:
        raise ModelError(f"{where}: context_attention {attention!r}, expected one of "
                         f"{CONTEXT_ATTENTION}")
    canvas_attention = raw.get("canvas_attention", "bidirectional")
    if canvas_attention not in CANVAS_ATTENTION:
        raise ModelError(f"{where}: canvas_attention {canvas_attention!r}, expected one of "
                         f"{CANVAS_ATTENTION}")
    flags = {}
    for name, default in (("shift", False), ("reads_suffix", True)):
        flags[name] = raw.get(name, default)
        if not isinstance(flags[name], bool):
            raise ModelError(f"{where}: {name} must be true or false")
    weights = raw.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise ModelError(f"{where}: weights must name a file")
    arch = _require(raw, "architecture", dict, where)
    specials = _require(raw, "special_tokens", dict, where)
    vocab_size = _require(arch, "vocab_size", int, where + " architecture")
    ids = {}
    for name in ("pad", "mask", "end_of_span", "file"):
        ids[name] = _require(specials, name, int, where + " special_tokens")
        if not 0 <= ids[name] < vocab_size:
            raise ModelError(f"{where}: special token {name}={ids[name]} outside the vocabulary")
    buckets = _require(raw, "canvas_buckets", list, where)
    if not buckets or any(not isinstance(b, int) or b <= 0 for b in buckets):
        raise ModelError(f"{where}: canvas_buckets must be positive integers")
    graphs_raw = _require(raw, "graphs", dict, where)
    if "cpu" not in graphs_raw:
        raise ModelError(f"{where}: graphs has no 'cpu' variant")
    graphs = {}
    for provider, files in graphs_raw.items():
        if not isinstance(files, dict) or "encoder" not in files or "decoder" not in files:
            raise ModelError(f"{where}: graphs.{provider} needs 'encoder' and 'decoder'")
        graphs[provider] = GraphFiles(
            encoder=str(files["encoder"]),
            decoder=str(files["decoder"]),
            dtype=str(files.get("dtype", "float32")),
        )
    sampler_raw = raw.get("sampler", {})
    if not isinstance(sampler_raw, dict):
        raise ModelError(f"{where}: sampler must be an object")
    known = set(SamplerDefaults.__dataclass_fields__)
    sampler = SamplerDefaults(**{k: v for k, v in sampler_raw.items() if k in known})
    core = {
        "format", "name", "version", "special_tokens", "canvas_buckets", "max_context",
        "max_position", "sampler", "graphs", "tokenizer", "context_attention", "weights",
        "canvas_attention", "shift", "reads_suffix",
    }
    n_kv_heads = arch.get("n_kv_heads", 0)
    if not isinstance(n_kv_heads, int) or isinstance(n_kv_heads, bool) or n_kv_heads < 0:
        raise ModelError(f"{where}: architecture n_kv_heads must be a non-negative integer")
    return ModelCard(
        name=str(raw.get("name", directory.name)),
        version=str(raw.get("version", "0")),
        vocab_size=vocab_size,
        n_layers=_require(arch, "n_layers", int, where + " architecture"),
        n_heads=_require(arch, "n_heads", int, where + " architecture"),
        head_dim=_require(arch, "head_dim", int, where + " architecture"),
        special_tokens=SpecialTokens(**ids),
        canvas_buckets=tuple(sorted(buckets)),
        max_context=_require(raw, "max_context", int, where),
        max_position=_require(raw, "max_position", int, where),
        sampler=sampler,
        graphs=graphs,
        tokenizer=str(raw.get("tokenizer", "tokenizer.json")),
        context_attention=attention,
        n_kv_heads=n_kv_heads,
        canvas_attention=canvas_attention,
        shift=flags["shift"],
        reads_suffix=flags["reads_suffix"],
        weights=weights,
        drafter=_drafter_card(raw.get("drafter"), where,
                              _require(arch, "n_layers", int, where + " architecture")),
        directory=directory,
        extra={k: v for k, v in raw.items() if k not in core},
    )


def load_card(directory: str | Path) -> ModelCard:
    """Read and validate `directory/model.json`, checking the files it names exist."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    card_path = directory / "model.json"
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{card_path} is missing: not a model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card_path} cannot be read: {exc}") from None
    card = parse_card(raw, directory)
    needed = [card.tokenizer] + [f for g in card.graphs.values() for f in (g.encoder, g.decoder)]
    needed += [card.weights] if card.weights else []
    needed += [card.drafter.graph] if card.drafter and card.drafter.graph else []
    for name in needed:
        if not card.path(name).is_file():
            raise ModelError(f"{directory}: model.json names {name}, which is missing")
    return card


def default_model_dir() -> Path:
    """The model that ships inside the package."""
    return Path(__file__).resolve().parent / "models" / "default"
