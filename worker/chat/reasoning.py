"""Thinking kept apart from the answer: the tags a template's models think between, and the
split of an output into its thinking and the rest.

Models that think write a block between tags before their answer (`<think>…</think>`: DeepSeek
R1, Qwen 3 / QwQ / Qwen 3.5, SmolLM3, GLM, Kimi K2 Thinking, MiniMax M2; `[THINK]…[/THINK]`:
Ministral 3 Reasoning). Some templates open the block in the generation prompt themselves
(Qwen 3.5 and DeepSeek R1 end it with `<think>\n`), so the output starts inside it. gpt-oss
and Command R7B carry thinking in their own syntax, which their tool-call format reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from llorch.worker.chat.formats.base import held_back


@dataclass(frozen=True)
class ThinkTags:
    open: str
    close: str


# In the order they are looked for in a template's text.
KNOWN_TAGS = (ThinkTags("<think>", "</think>"), ThinkTags("[THINK]", "[/THINK]"))


def think_tags(template: str | None) -> ThinkTags | None:
    """The thinking tags a template writes, if any."""
    for tags in KNOWN_TAGS:
        if template and tags.open in template and tags.close in template:
            return tags
    return None


def opened_in_prompt(prompt: str, tags: ThinkTags | None) -> bool:
    """Whether the generation prompt ends inside an open thinking block."""
    if tags is None:
        return False
    tail = prompt.rstrip()
    return tail.endswith(tags.open)


@dataclass(frozen=True)
class Split:
    reasoning: str
    rest: str  # the output after the thinking block (the answer, calls)
    thinking: bool  # still inside the block (partial only)


def split(text: str, tags: ThinkTags, *, started: bool, partial: bool) -> Split:
    """The thinking and the rest of `text`. A partial split holds back whatever may still
    turn out to be a tag, and whitespace at the end of the thinking (the final one drops
    it), so that what it returns only ever grows."""
    body = text
    if not started:
        stripped = text.lstrip()
        if stripped.startswith(tags.open):
            body = stripped[len(tags.open) :]
        elif partial and tags.open.startswith(stripped):
            return Split("", "", True)  # nothing yet, or the start of the opening tag
        else:
            return Split("", text, False)
    end = body.find(tags.close)
    if end < 0:
        if partial:
            return Split(body[: held_back(body, [tags.close])].strip(), "", True)
        return Split(body.strip(), "", False)  # cut off (max_tokens) while thinking
    return Split(body[:end].strip(), body[end + len(tags.close) :].lstrip(), False)
