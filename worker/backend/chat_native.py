"""llama.cpp's built-in chat templates, for models whose GGUF carries no `tokenizer.chat_template`.

llama.cpp implements a few dozen chat formats in C++ (llama-chat.cpp) and selects one by name.
A GGUF without a template gives nothing to detect a format from, so the model's architecture
picks it here; architectures whose checkpoints ship under several chat formats map to the most
common current one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp.llama_cpp as ll

from llorch.worker.backend.errors import NoChatTemplateError
from llorch.worker.backend.protocol import ChatMessage, ModelInfo

# llama.cpp architecture name (general.architecture) -> llama.cpp built-in template name.
# The names on the right are those of llama_chat_builtin_templates().
ARCH_TEMPLATES: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "llama": "llama3",  # Llama 3.x, SmolLM and most recent llama-architecture chat models
    "llama4": "llama4",
    "phi3": "phi3",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "stablelm": "chatml",
    "starcoder2": "chatml",
    "mistral3": "mistral-v7",
    "command-r": "command-r",
    "cohere2": "command-r",
    "deepseek": "deepseek",
    "deepseek2": "deepseek2",
    "chatglm": "chatglm4",
    "exaone": "exaone3",
    "exaone4": "exaone4",
    "granite": "granite",
    "granitemoe": "granite",
    "minicpm": "minicpm",
    "orion": "orion",
    "openai-moe": "gpt-oss",
    "gpt-oss": "gpt-oss",
    "hunyuan-moe": "hunyuan-moe",
    "hunyuan-dense": "hunyuan-dense",
    "falcon-h1": "falcon3",
    "rwkv6": "rwkv-world",
    "rwkv7": "rwkv-world",
}


def builtin_names() -> list[str]:
    """The template names this build of llama.cpp knows."""
    n = ll.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    ll.llama_chat_builtin_templates(names, n)
    return [name.decode() for name in names if name]


def template_name(info: ModelInfo) -> str:
    name = ARCH_TEMPLATES.get(info.architecture)
    if name is None or name not in builtin_names():
        families = ", ".join(sorted(ARCH_TEMPLATES))
        raise NoChatTemplateError(
            f"model {info.name!r} (architecture {info.architecture!r}) has no chat template and "
            f"llama.cpp has no built-in one for that family; supported families: {families}"
        )
    return name


def apply_builtin_template(
    info: ModelInfo, messages: Sequence[ChatMessage], add_generation_prompt: bool
) -> str:
    """The prompt text of `messages` in the built-in format of the model's family. It carries
    no BOS: tokenizing it with add_special=True adds the model's own."""
    name = template_name(info).encode()
    # Keep the encoded strings referenced until the call returns: the structs only point at them.
    encoded = [(m.role.encode(), m.content.encode()) for m in messages]
    chat = (ll.llama_chat_message * max(1, len(encoded)))(
        *[ll.llama_chat_message(role, content) for role, content in encoded]
    )
    size = 256 + 2 * sum(len(r) + len(c) for r, c in encoded)
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_chat_apply_template(name, chat, len(encoded), add_generation_prompt, buf, size)
        if n < 0:
            raise NoChatTemplateError(f"llama.cpp could not apply its {name.decode()!r} template")
        if n <= size:
            return buf.raw[:n].decode("utf-8", "replace")
        size = n + 1  # the buffer was too small: n is the length needed
    raise NoChatTemplateError(f"llama.cpp's {name.decode()!r} template gave no stable length")
