"""The boundary between the worker and an inference library.

Everything here is plain data: the HTTP layer and the scheduler depend on this module only,
never on the library a backend wraps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol


class StopReason(StrEnum):
    MAX_TOKENS = "MAX_TOKENS"
    EOS = "EOS"
    STOP_SEQUENCE = "STOP_SEQUENCE"
    CANCELLED = "CANCELLED"
    ERROR = "ERROR"


# llama.h's LLAMA_DEFAULT_SEED asks the dist sampler for a random seed: a request's seed is
# 0..MAX_SEED, and never that value on purpose.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF
MAX_SEED = LLAMA_DEFAULT_SEED - 1


@dataclass(frozen=True)
class SamplingParams:
    """Parameters of llama.cpp's sampler chain; the defaults leave the distribution untouched."""

    temperature: float = 1.0  # 0 selects greedy decoding
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: a fresh random seed per request
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    typical_p: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -inf bans a token
    grammar: str | None = None  # GBNF; JSON schemas are converted to GBNF before this point
    # A lazy grammar: free text until one of these regexes matches the output, then the grammar
    # from the match's start (or its first group's); empty: the grammar applies from the first
    # token (llama_sampler_init_grammar_lazy_patterns).
    grammar_triggers: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# A request's LoRA adapters: (name, scale) pairs, sorted by name, without zero scales.
LoraKey = tuple[tuple[str, float], ...]


def lora_key(pairs: Sequence[tuple[str, float]]) -> LoraKey:
    return tuple(sorted((name, float(scale)) for name, scale in pairs if scale != 0.0))


@dataclass(frozen=True)
class LoraSpec:
    """An adapter served with the model (`--lora NAME=PATH[:SCALE]`)."""

    name: str
    path: Path
    scale: float = 1.0  # the served scale: what a request that names no adapters gets


@dataclass(frozen=True)
class SpecOptions:
    """Speculative decoding: draft tokens that the model verifies in one decode."""

    default: bool = False  # whether requests that do not say speculate (--spec, --draft-model)
    # --spec auto: those requests draft only where the cost rule expects the step to gain
    # (worker/backend/spec_cost.py); a request's `speculative: true` drafts regardless.
    auto: bool = False
    draft_model: Path | None = None  # drafts with this GGUF; None: prompt lookup (n-grams)
    draft_max: int = 16  # a draft model's longest draft per sequence and step
    # Prompt lookup: the last `ngram` tokens are looked up earlier in the sequence, and the
    # `ngram_draft_min`..`ngram_draft_max` tokens that followed them are the draft, or none
    # (llama.cpp's ngram-simple defaults). A draft step costs about two plain steps on a small
    # model with a large vocabulary (Gemma 3 270M: 35 ms for 2 positions, 17 ms for 1), so
    # drafting rarely but long beats drafting often and short: bench/spec.py measured 1.8x
    # on rewriting and no loss where nothing repeats, against 1.3x and a loss for 3..8-token
    # matches with adaptive lengths.
    ngram: int = 12
    ngram_draft_min: int = 12
    ngram_draft_max: int = 48


@dataclass(frozen=True)
class FitOptions:
    """--fit's bounds: the context per slot is at most ctx_max (0: the model's training
    context) and at least ctx_min, and target_bytes stay free (llama.cpp's --fit-target)."""

    ctx_max: int = 4096
    ctx_min: int = 512
    target_bytes: int = 1 << 30


@dataclass(frozen=True)
class FitInfo:
    """What --fit chose, as /health shows it: the context per slot, the bytes the model is
    expected to take with it (weights, KV cache, compute buffers), the free bytes it saw on
    the device it sized against, and why."""

    ctx_per_slot: int
    parallel: int
    expected_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    free_bytes: int
    target_bytes: int
    device: str  # "host" or "gpu"
    reason: str


@dataclass(frozen=True)
class LoadOptions:
    ctx_size: int = 4096  # per sequence; 0: the model's training context
    parallel: int = 1  # sequences decoded together (slots), each with ctx_size tokens
    n_gpu_layers: int | Literal["auto"] = 0  # -1: all layers; auto: as many as fit
    threads: int | None = None  # None: the number of physical cores
    batch_size: int = 512
    # Sample inside llama.cpp's graph when a request's samplers allow it (llama.cpp's
    # experimental backend sampling); None: only when layers are offloaded to a GPU.
    backend_sampling: bool | None = None
    # Pooling of a generative model's embeddings: "last" (token) or "mean"; an embedding
    # model's own pooling always wins.
    embedding_pooling: str = "last"
    lora: tuple[LoraSpec, ...] = ()
    # GGUF metadata replaced at load time, as llama.cpp's --override-kv does
    # (e.g. ("tokenizer.ggml.eos_token_id", 107)).
    metadata_overrides: tuple[tuple[str, int | float | bool | str], ...] = ()
    # llama.cpp rpc servers ("HOST:PORT") whose devices take layers, before local GPUs.
    rpc_servers: tuple[str, ...] = ()
    # Share of the offloaded layers per device (rpc servers, then local GPUs); (): by free memory.
    tensor_split: tuple[float, ...] = ()
    speculative: SpecOptions = SpecOptions()
    # Host RAM for finished sequences' KV state (the prompt cache), in bytes; 0: none.
    cache_bytes: int = 0
    # The multimodal projector (llama.cpp's mtmd, --mmproj): images in; None: text only.
    mmproj: Path | None = None
    # The KV cache's element types (llama.cpp's names: f16, q8_0, ...; backend/kvcache.py) and
    # flash attention ("auto", "on", "off"), which a quantized V cache needs.
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: Literal["auto", "on", "off"] = "auto"
    # Sliding-window layers keep the whole context (True) or only their window, with prefix
    # reuse through checkpoints: at most `ctx_checkpoints` per slot, one every
    # `checkpoint_every` tokens of a prompt and near its end (backend/checkpoints.py).
    swa_full: bool = False
    ctx_checkpoints: int = 32
    checkpoint_every: int = 8192
    # --fit: the context per slot is chosen to fit the free memory (ctx_size is then not
    # used; backend/fit.py); None: ctx_size as given.
    fit: FitOptions | None = None
    # Where tensors go, as llama.cpp's -ot: (regex, buffer type name) in order, the first
    # match wins (--override-tensor, --n-cpu-moe, --cpu-moe; backend/tensor_overrides.py).
    tensor_overrides: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DecodedImage:
    """An image as the projector takes it: RGB bytes, row by row, and the hash of those
    bytes and the size (what the prompt cache keys the image by)."""

    rgb: bytes
    width: int
    height: int
    sha256: bytes


@dataclass(frozen=True)
class EncodedAudio:
    """An audio clip as the request carried it (wav, mp3 or flac), its length read from the
    header and bounded (worker/audio_header.py); the projector decodes it to the model's
    sample rate, and the prompt cache keys it by a hash of the decoded samples."""

    data: bytes
    format: str
    seconds: float


# What a request's media part is once loaded: an image's pixels or an audio clip.
Media = DecodedImage | EncodedAudio


@dataclass(frozen=True)
class MediaSpan:
    """A media chunk in a prompt: `length` placeholder ids from `start`, which the decoder
    fills with the chunk's embeddings (`chunk` is the backend's, opaque here). `n_pos`: the
    positions the chunk takes (None: one per token); M-RoPE models (Qwen-VL) give an image
    2-D positions that advance the sequence's position by max(columns, rows) only."""

    start: int
    length: int
    chunk: object
    n_pos: int | None = None

    @property
    def shift(self) -> int:
        """How much less than one a token the positions after the chunk advance."""
        return 0 if self.n_pos is None else self.length - self.n_pos


def position(media: Sequence[MediaSpan], index: int) -> int:
    """The position of the prompt's token at `index` (or of the token that follows when
    `index` is its length): the index, less the shift of every chunk before it."""
    return index - sum(span.shift for span in media if span.start + span.length <= index)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the decoder reads of a job. A surface fills what it asks for; the engine
    fills the prompt's tokens, the adapters and the token limit at admission."""

    prompt_tokens: tuple[int, ...] = ()
    max_tokens: int = 0  # 0 only with echo: score the prompt, generate nothing
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    # Log-probabilities of each generated token and of this many alternatives (0: only the
    # chosen token's); None: none. Of the model's raw distribution (log-softmax of the logits,
    # before any sampling transform), as OpenAI defines them.
    logprobs: int | None = None
    # Score the prompt too: one PromptScores event with each prompt token's log-probability.
    echo: bool = False
    lora: LoraKey = ()  # the adapters and scales to decode with
    # Draft tokens and verify them together (None: as the server is set up). Ignored where
    # it does not apply: log-probabilities, echo, sampling inside the graph.
    speculative: bool | None = None
    # Control tokens whose text goes into the output (a tool-call format's markup such as
    # `[TOOL_CALLS]` or `<|channel|>`); other control tokens add no text.
    preserved_tokens: frozenset[int] = frozenset()
    reasoning_budget: ReasoningBudget | None = None
    # Images in the prompt: their placeholder ids in prompt_tokens are negative.
    media: tuple[MediaSpan, ...] = ()


@dataclass(frozen=True)
class ReasoningBudget:
    """Thinking bounded to `tokens` tokens: once that many are generated inside the thinking
    block, `close` (the tokens of its closing tag) is forced and the answer follows."""

    tokens: int
    open: tuple[int, ...]  # the tokens of the opening tag (e.g. `<think>`)
    close: tuple[int, ...]
    started: bool = False  # the prompt already opened the block (the generation prompt did)


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    piece: bytes  # the token's bytes (a piece may end inside a multi-byte character)
    logprob: float | None  # None for the first prompt token, which nothing predicts


@dataclass(frozen=True)
class Scored:
    """A token's log-probability and the most likely alternatives at its position."""

    token: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is the text it completes, which may be empty while a
    multi-byte character or a possible stop sequence is still being held back."""

    index: int
    token_id: int
    text: str
    scored: Scored | None = None  # when the request asked for logprobs


@dataclass(frozen=True)
class PromptScores:
    """The prompt's tokens with their log-probabilities (a request with echo), sent once the
    prompt is read, before any generated token."""

    tokens: tuple[Scored, ...]


@dataclass(frozen=True)
class FinishEvent:
    stop_reason: StopReason
    tokens_out: int
    decode_time_ms: float
    prompt_tokens: int
    seed: int | None = None
    stop_sequence_matched: str | None = None
    prompt_time_ms: float = 0.0
    prompt_cached: int = 0  # prompt tokens found in the KV cache and not ingested again
    drafted: int = 0  # speculative decoding: draft tokens verified, and those accepted
    accepted: int = 0
    draft_saved_ms: float = 0.0  # its estimated decode time saved (negative: lost)


@dataclass(frozen=True)
class SequenceFailed:
    """The sequence could not go on (decode failure, bad grammar, out of memory)."""

    error: Exception


GenerationEvent = TokenEvent | FinishEvent | PromptScores


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0


@dataclass(frozen=True)
class BackendInfo:
    library: str
    version: str
    preset: str | None
    gpu_offload: bool
    devices: tuple[Device, ...]
    system_info: str


@dataclass(frozen=True)
class FimTokens:
    """A model's fill-in-the-middle tokens as llama.cpp reports them (llama_vocab_fim_*): the
    GGUF's tokenizer.ggml.fim_* ids, or the tokens its loader found by their text; None where
    the vocabulary has none. `bos`: the BOS token where the vocabulary starts prompts with one
    (llama_vocab_get_add_bos), which llama-server puts before the FIM prefix."""

    pre: int | None = None
    suf: int | None = None
    mid: int | None = None
    pad: int | None = None
    rep: int | None = None  # repository name (repo-level FIM)
    sep: int | None = None  # file separator
    bos: int | None = None


# The KV cache's element types, llama.cpp's names (common/arg.cpp's kv_cache_types).
KV_CACHE_TYPES = ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


@dataclass(frozen=True)
class KvCacheInfo:
    """The KV cache of a loaded context (backend/kvcache.py), as /health shows it."""

    type_k: str
    type_v: str
    flash_attn: str  # "auto", "on" or "off", as asked
    size_bytes: int  # all slots and layers, as llama.cpp reported it (to 0.01 MiB)
    bytes_per_token: float  # size_bytes over the context's cells: what a token costs


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    architecture: str
    name: str
    description: str
    size_bytes: int  # size of the GGUF file
    n_params: int
    n_ctx_train: int
    n_ctx: int  # context of the loaded instance
    n_vocab: int
    n_gpu_layers: int
    sha256: str
    chat_template: str | None = None
    bos_token: str | None = None  # text of the BOS/EOS tokens, for chat templates
    eos_token: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # An encoder (non-causal attention, e.g. BERT): it embeds and cannot generate.
    embedding_only: bool = False
    n_ctx_embed: int = 0  # the longest input an embedding takes, in tokens
    normalize_embeddings: bool = True  # L2, unless the model's own config says not to
    # A cross-encoder (the GGUF's pooling type is rank): it scores query-document pairs
    # (POST /v1/rerank) and has no embeddings to give.
    reranker: bool = False
    # An LLM reranker's pair prompt (Qwen3-Reranker): the GGUF's `rerank` chat template, with
    # `{query}` and `{document}` to fill, as llama-server's /rerank fills it; None: the
    # cross-encoder's own pair form (worker/rerank.py)
    rerank_template: str | None = None
    # A RoBERTa-style pair's separator after the query's closing token (`</s></s>`): the SEP
    # id where the tokenizer adds EOS and SEP both, as llama-server's /rerank reads it
    pair_separator: int | None = None
    # sentence-transformers' prompts by name, prepended to a text to embed, and the one a
    # request naming none gets (config_sentence_transformers.json, written by the converter)
    embedding_prompts: dict[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    lora: tuple[LoraSpec, ...] = ()  # adapters served with the model
    # Where the GGUF came from (its source, revision, quantizer), from its metadata at load;
    # empty when it says nothing (backend/provenance.py).
    source: dict[str, Any] = field(default_factory=dict)
    fim: FimTokens = FimTokens()  # fill-in-the-middle tokens (POST /infill, worker/fim.py)
    # What the projector (--mmproj) lets the model read besides text: "vision", "audio".
    media_inputs: tuple[str, ...] = ()
    kv_cache: KvCacheInfo | None = None  # None: no cache (an encoder) or not known
    fit: FitInfo | None = None  # what --fit chose; None: --ctx-size as given


@dataclass(frozen=True)
class RankInput:
    """One query-document pair as the cross-encoder reads it: `tokens` whole (specials
    included), of which the first `n_first` are the first segment (token type 0: `[CLS] query
    [SEP]`) and the rest the second (token type 1, as BERT's tokenizer marks a pair)."""

    tokens: tuple[int, ...]
    n_first: int


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


PREFIX_BLOCK = 256  # tokens per published prefix hash (worker/backend/prompt_cache.py)


@dataclass(frozen=True)
class CacheSummary:
    """What the decoder holds cached: hashes of block-aligned prompt prefixes (slots and the
    host-RAM cache; see prompt_cache.py for the hash) and the host-RAM cache's use."""

    prefixes: tuple[str, ...] = ()
    entries: int = 0
    bytes_used: int = 0
    bytes_budget: int = 0
    # Context checkpoints held for the slots (backend/checkpoints.py), and their bytes.
    checkpoints: int = 0
    checkpoint_bytes: int = 0


class BatchDecoder(Protocol):
    """Decodes several sequences together: each step() runs one llama_decode over a batch
    holding one token of every generating sequence and chunks of prompts being ingested."""

    @property
    def n_slots(self) -> int: ...

    @property
    def ctx_per_slot(self) -> int: ...

    def free_slots(self) -> int: ...

    def add(self, key: object, request: GenerationRequest) -> None:
        """Start a sequence; its events carry `key`. Needs a free slot."""
        ...

    def cancel(self, key: object) -> None:
        """End a sequence now; its FinishEvent (CANCELLED) comes from the next step()."""
        ...

    def step(self) -> list[tuple[object, GenerationEvent | SequenceFailed]]: ...

    def kv_used(self) -> int:
        """KV cells holding tokens of live sequences."""
        ...

    def cache_summary(self) -> CacheSummary: ...


class ModelBackend(Protocol):
    """A loaded model that generates text through its batch decoder. Not thread-safe: one
    thread owns an instance (tokenize and detokenize only read the vocabulary)."""

    def load(self, path: Path, options: LoadOptions) -> ModelInfo: ...

    def info(self) -> ModelInfo: ...

    def backend_info(self) -> BackendInfo: ...

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`. `parse_special`: text of control tokens (`<start_of_turn>`)
        becomes those tokens; off, it is tokenized as the plain text it is."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def check_grammar(self, grammar: str) -> None:
        """Parse a GBNF grammar against the vocabulary, off the model thread (it only reads
        the vocabulary). Raises InvalidRequestError when llama.cpp refuses it."""
        ...

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One pooled, unnormalised vector per input, from an embedding context of its own
        (created on first use; the thread that calls this owns it). Each input fits
        ModelInfo.n_ctx_embed."""
        ...

    def rank(self, inputs: Sequence[RankInput]) -> list[float]:
        """One relevance score per pair (the cross-encoder's logit), from the embedding
        context (rank pooling), on the thread that owns it. Each pair fits
        ModelInfo.n_ctx_embed."""
        ...

    def decoder(self) -> BatchDecoder:
        """The batch decoder over this model's context (one per loaded model)."""
        ...

    def media_prompt(
        self, tokens: Sequence[int], media: Sequence[Media], marker: int
    ) -> tuple[tuple[int, ...], tuple[MediaSpan, ...]]:
        """`tokens` with each `marker` replaced by its image or audio clip (in order): the
        family's markup around it and placeholder ids for its embeddings, and where those are.
        Off the model thread (it only preprocesses). Raises InvalidRequestError for media the
        projector refuses, or when the model takes none."""
        ...

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool
    ) -> str:
        """The prompt from llama.cpp's built-in chat template for this model's family (used
        when the GGUF carries no template). Raises NoChatTemplateError when there is none."""
        ...

    def close(self) -> None: ...
