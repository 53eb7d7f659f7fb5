"""The chat core: one surface-neutral request (types.py), the model's template (template.py),
tool-call formats per family (formats/), thinking (reasoning.py), the prompt and grammar of a
request (prompt.py) and the model's output read back into events (output.py)."""

from llorch.worker.chat.template import (
    ChatTemplateError,
    chat_prompt_tokens,
    render_chat,
    render_template,
)

__all__ = ["ChatTemplateError", "chat_prompt_tokens", "render_chat", "render_template"]
