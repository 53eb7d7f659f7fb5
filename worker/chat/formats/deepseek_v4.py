"""DeepSeek V4 and V4-Flash: DSML calls in a `tool_calls` block (deepseek_dsml)."""

from __future__ import annotations

from llorch.worker.chat.formats.deepseek_dsml import DeepseekDsmlFormat

FORMAT = DeepseekDsmlFormat(name="deepseek_v4", block="tool_calls")
