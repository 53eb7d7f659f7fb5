"""Chat prompts: Hugging Face Jinja templates, and llama.cpp's built-in ones for the real model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llorch.worker.backend.errors import NoChatTemplateError
from llorch.worker.backend.protocol import ChatMessage, ModelInfo
from llorch.worker.chat import ChatTemplateError, chat_prompt_tokens, render_chat, render_template

# Gemma's template as it ships in tokenizer_config.json, abridged to text content.
GEMMA_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/'
    'user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {{- message['content'] | trim -}}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MESSAGES = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello"),
    ChatMessage("user", "Capital of France?"),
]


def info(template: str | None = None, architecture: str = "gemma3") -> ModelInfo:
    return ModelInfo(
        path=Path("/m.gguf"),
        architecture=architecture,
        name="m",
        description="",
        size_bytes=1,
        n_params=1,
        n_ctx_train=8,
        n_ctx=8,
        n_vocab=8,
        n_gpu_layers=0,
        sha256="",
        chat_template=template,
        bos_token="<bos>",
        eos_token="<eos>",
    )


def test_gemma_template_renders_like_transformers():
    text = render_template(GEMMA_TEMPLATE, MESSAGES, bos_token="<bos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_chatml_and_no_generation_prompt():
    text = render_template(CHATML_TEMPLATE, MESSAGES[1:2], add_generation_prompt=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n"


def test_raise_exception_becomes_a_chat_template_error():
    bad = [ChatMessage("user", "a"), ChatMessage("user", "b")]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_template(GEMMA_TEMPLATE, bad)


def test_globals_and_tojson():
    template = "{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|{{ eos_token }}"
    text = render_template(template, [ChatMessage("user", "<é>")], eos_token="</s>")
    assert text == '[{"role": "user", "content": "<é>"}]|4|</s>'


def test_the_sandbox_refuses_unsafe_templates():
    with pytest.raises(ChatTemplateError):
        render_template("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])
    with pytest.raises(ChatTemplateError):
        render_template("{% for x in %}", [])
    with pytest.raises(ChatTemplateError):
        render_template("{{ cycler.__init__.__globals__ }}", [])


def test_a_template_may_build_its_own_lists():
    # Kimi K2's template appends to a list it made (llama.cpp's minja allows it too).
    text = "{% set names = [] %}{% for m in messages %}{% set _ = names.append(m.role) %}"
    text += "{% endfor %}{{ names | join(',') }}"
    assert render_template(text, [ChatMessage("user", "a"), ChatMessage("assistant", "b")]) == (
        "user,assistant"
    )


def test_render_chat_prefers_the_models_template():
    builtin_calls = []

    def builtin(messages, add_generation_prompt):
        builtin_calls.append(messages)
        return "builtin"

    assert render_chat(info(CHATML_TEMPLATE), MESSAGES[1:2], builtin).startswith("<|im_start|>")
    assert render_chat(info(None), MESSAGES[1:2], builtin) == "builtin"
    assert len(builtin_calls) == 1


# -- the real model: Gemma 3 270M has no template, llama.cpp's "gemma" one applies --------------


def test_builtin_gemma_template_with_the_real_model(backend):
    text = backend.builtin_chat_template(MESSAGES, True)
    assert text.startswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert "<start_of_turn>model\nHello<end_of_turn>\n" in text
    assert text.endswith("<start_of_turn>model\n")
    assert not text.startswith("<bos>")  # tokenizing adds the model's BOS


def test_chat_prompt_tokens_have_one_bos(backend):
    model = backend.info()
    assert model.chat_template is None
    bos = backend.tokenize("", True)
    tokens = chat_prompt_tokens(backend, model, MESSAGES)
    assert tokens[:1] == bos and tokens[1] != bos[0]
    # A template that writes the BOS itself does not get a second one.
    with_template = dataclasses.replace(model, chat_template=GEMMA_TEMPLATE, bos_token="<bos>")
    assert chat_prompt_tokens(backend, with_template, MESSAGES) == tokens


def test_unknown_family_has_no_builtin_template():
    from llorch.worker.backend.chat_native import apply_builtin_template

    with pytest.raises(NoChatTemplateError, match=r"architecture 'bert'.*supported families"):
        apply_builtin_template(info(architecture="bert"), MESSAGES, True)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "phi3", "gemma2"])
def test_builtin_templates_of_other_families_apply(architecture):
    from llorch.worker.backend.chat_native import apply_builtin_template

    text = apply_builtin_template(info(architecture=architecture), MESSAGES, True)
    assert "Capital of France?" in text and "Be brief." in text
