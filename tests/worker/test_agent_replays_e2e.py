"""End to end: request sequences shaped as coding agents send them, replayed against the default
set-up over a real socket.

- Claude Code (Anthropic Messages): a long system prompt in blocks, dozens of tools with
  JSON-schema inputs, the `anthropic-version`/`anthropic-beta` headers and `x-api-key`,
  streaming; then the next turn with the assistant's `tool_use` and the user's `tool_result`
  blocks (one of them an error), and a count_tokens first, as the client does.
- Codex (OpenAI Responses): `instructions`, function tools, `store: false`, streaming; then the
  next turn carrying the whole conversation again, `function_call` and `function_call_output`
  items included, with `parallel_tool_calls` and `reasoning` set.

The tool definitions are written here in the shape those clients use (names, schemas of a few
properties, long descriptions); what is checked is that every turn is accepted, streams in the
API's own event order, ends, and answers with a valid shape. SmolLM2-135M's words are not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from support import WorkerProcess, start_worker

pytestmark = pytest.mark.e2e

KEY = "replay-key"
TOOL_NAMES = [
    "Bash", "Read", "Edit", "MultiEdit", "Write", "Glob", "Grep", "LS", "NotebookRead",
    "NotebookEdit", "WebFetch", "WebSearch", "TodoWrite", "Task", "ExitPlanMode", "BashOutput",
    "KillShell", "SlashCommand", "mcp__git__status", "mcp__git__diff", "mcp__git__log",
    "mcp__fs__tree", "mcp__fs__stat", "mcp__issues__list", "mcp__issues__show",
    "mcp__tests__run", "mcp__tests__list", "mcp__docs__search", "mcp__docs__open",
    "mcp__lint__check",
]  # fmt: skip
SYSTEM = (
    "You are an interactive command line tool that helps users with software engineering "
    "tasks. Use the instructions below and the tools available to you to assist the user. "
) * 3


def schema(name: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": f"The path {name} works on"},
            "pattern": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1},
            "flags": {"type": "array", "items": {"type": "string"}},
            "options": {
                "type": "object",
                "properties": {"recursive": {"type": "boolean"}, "depth": {"type": "integer"}},
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    }


def describe(name: str) -> str:
    return f"{name}: use it when the task needs it; it reads its arguments strictly."


@pytest.fixture(scope="module")
def agent_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc: WorkerProcess = start_worker(
        tmp_path_factory.mktemp("replay"),
        "--api-token",
        KEY,
        # 30 tools with their schemas and the system blocks are about 4,800 tokens.
        "--ctx-size",
        "8192",
        "--parallel",
        "1",
    )
    yield proc.url
    proc.stop()


def sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of every frame; Anthropic's and the Responses API's streams name
    each event on an `event:` line."""
    assert response.status_code == 200, response.read()
    frames, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            frames.append((name or "", json.loads(line.removeprefix("data: "))))
            name = None
    return frames


def test_a_claude_code_session(agent_worker: str) -> None:
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
    }
    tools = [{"name": n, "description": describe(n), "input_schema": schema(n)} for n in TOOL_NAMES]
    system = [
        {"type": "text", "text": "You are Claude Code, a CLI for coding."},
        {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}},
    ]
    first = [{"role": "user", "content": [{"type": "text", "text": "List the files in src/."}]}]
    body = {"model": "claude-sonnet-4-5", "system": system, "tools": tools, "messages": first}
    with httpx.Client(base_url=agent_worker, headers=headers, timeout=600) as http:
        counted = http.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200, counted.text
        assert counted.json()["input_tokens"] > 500
        turn = body | {
            "max_tokens": 64,
            "stream": True,
            "metadata": {"user_id": "user_abc_account_1_session_2"},
            "tool_choice": {"type": "auto"},
            "temperature": 0,
        }
        with http.stream("POST", "/v1/messages", json=turn) as response:
            frames = sse(response)
        names = [name for name, _ in frames if name != "ping"]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert all(name == data["type"] for name, data in frames)
        # The next turn: the assistant called two tools, one failed.
        history = [
            *first,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "I'll look."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "LS", "input": {"path": "src"}},
                    {
                        "type": "tool_use",
                        "id": "toolu_01B",
                        "name": "Read",
                        "input": {"path": "src/main.py", "limit": 20},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A",
                        "content": "main.py\nutil.py",
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01B",
                        "content": [{"type": "text", "text": "permission denied"}],
                        "is_error": True,
                    },
                ],
            },
        ]
        forced = turn | {"messages": history, "tool_choice": {"type": "any"}}
        with http.stream("POST", "/v1/messages", json=forced) as response:
            frames = sse(response)
        starts = [d["content_block"] for n, d in frames if n == "content_block_start"]
        uses = [b for b in starts if b["type"] == "tool_use"]
        assert uses and uses[0]["name"] in TOOL_NAMES
        stop = next(d for n, d in frames if n == "message_delta")["delta"]["stop_reason"]
        assert stop in ("tool_use", "max_tokens")
        if stop == "tool_use":
            partial = "".join(
                d["delta"]["partial_json"]
                for n, d in frames
                if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
            )
            assert "path" in json.loads(partial)


def test_a_codex_session(agent_worker: str) -> None:
    headers = {"authorization": f"Bearer {KEY}", "originator": "codex_cli_rs"}
    tools = [
        {
            "type": "function",
            "name": n,
            "description": describe(n),
            "parameters": schema(n),
            "strict": False,
        }
        for n in ["shell", "apply_patch", "update_plan", "view_image_path", *TOOL_NAMES[:12]]
    ]
    first = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Run the tests and tell me what fails."}],
        }
    ]
    base = {
        "model": "gpt-5-codex",
        "instructions": SYSTEM,
        "tools": tools,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "max_output_tokens": 64,
        "temperature": 0,
    }
    with httpx.Client(base_url=agent_worker, headers=headers, timeout=600) as http:
        with http.stream("POST", "/v1/responses", json=base | {"input": first}) as response:
            frames = sse(response)
        kinds = [d["type"] for _, d in frames]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] in ("response.completed", "response.incomplete")
        assert [d["sequence_number"] for _, d in frames] == list(range(len(frames)))
        # The next turn sends the whole conversation again (store is false).
        history = [
            *first,
            {
                "type": "function_call",
                "call_id": "call_shell_1",
                "name": "shell",
                "arguments": json.dumps({"path": ".", "flags": ["pytest", "-q"]}),
            },
            {"type": "function_call_output", "call_id": "call_shell_1", "output": "1 failed"},
        ]
        turn = base | {"input": history, "tool_choice": "required"}
        with http.stream("POST", "/v1/responses", json=turn) as response:
            frames = sse(response)
        done = [d["item"] for _, d in frames if d["type"] == "response.output_item.done"]
        calls = [item for item in done if item["type"] == "function_call"]
        final = frames[-1][1]
        assert final["type"] in ("response.completed", "response.incomplete")
        if final["type"] == "response.completed":
            assert calls and calls[0]["name"] in {t["name"] for t in tools}
            assert "path" in json.loads(calls[0]["arguments"])
