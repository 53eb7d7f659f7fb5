"""Apriel 1.5 and 1.6 (ServiceNow): the calls are one JSON array inside `<tool_calls>` tags,
each call's "id" written too when the template is asked to (add_tool_id),

    <tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>

(unsloth-Apriel-1.5.jinja, Apriel-1.6-15b-Thinker-fixed.jinja: `'\\n<tool_calls>['`, the
calls joined by ", ", then `']</tool_calls>'`.)
"""

from __future__ import annotations

from llorch.worker.chat.formats.taggedarray import TaggedArrayFormat

FORMAT = TaggedArrayFormat(
    name="apriel",
    start="<tool_calls>",
    end="</tool_calls>",
    signs=("<tool_calls>[", "]</tool_calls>"),
)
