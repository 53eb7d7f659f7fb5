"""DeepSeek V3.2: DSML calls in a `function_calls` block (deepseek_dsml)."""

from __future__ import annotations

from llorch.worker.chat.formats.deepseek_dsml import DeepseekDsmlFormat

FORMAT = DeepseekDsmlFormat(name="deepseek_v32", block="function_calls")
