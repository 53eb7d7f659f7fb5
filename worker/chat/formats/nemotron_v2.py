"""NVIDIA Nemotron Nano v2: the calls are one JSON array inside `<TOOLCALL>` tags,

    <TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>

(NVIDIA-Nemotron-Nano-v2.jinja; llama.cpp's chat-diff-analyzer.cpp patches its automatic
parser to the same: per-call start <TOOLCALL>, a wrapped array of JSON calls.) Nemotron 3 Nano
writes Qwen3-Coder's XML instead.
"""

from __future__ import annotations

from llorch.worker.chat.formats.taggedarray import TaggedArrayFormat

# The template's own role tokens (<SPECIAL_11>) make sure another template that happens to
# mention <TOOLCALL> is not taken for this one.
FORMAT = TaggedArrayFormat(
    name="nemotron_v2",
    start="<TOOLCALL>",
    end="</TOOLCALL>",
    signs=("<TOOLCALL>[", "]</TOOLCALL>", "<SPECIAL_11>"),
)
