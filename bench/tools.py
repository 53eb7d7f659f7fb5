"""Tool calling side by side: llorch vs llama-server, one GGUF, one chat template, over HTTP.

    python bench/tools.py [--model PATH] [--threads 2] [--rounds 6] [--tokens 128] [--doc]

One slot each, the same threads and context, prompt caches off, Qwen 2.5's chat template (Hermes
`<tool_call>` format; llama-server `--jinja --chat-template-file`). Streamed
`/v1/chat/completions` with 20 tools:
  ttft  a question a tool could answer: time to the first chunk with content or a tool call
  auto  a long story, tool_choice auto (a lazy grammar waits for its trigger while the model
        writes text): decode tokens/s, first chunk to last
  none  the same prompt, tool_choice "none" (the same tools rendered, no grammar)
Each system message starts with a unique number, so no server reuses a cached prompt prefix.
Rounds alternate which server goes first and whether auto or none does (the two always run
next to each other); medians.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load, write_section

BEGIN, END = "<!-- bench/tools.py -->", "<!-- end bench/tools.py -->"
serving = load("bench_serving", REPO / "bench" / "serving.py")
TEMPLATE = "vendor/llama.cpp/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
_counter = itertools.count()

# One tool a line (a line that starts with spaces continues the one above): name, description,
# then each parameter as `name type description`; the first parameter is required.
TOOLS = """
get_weather; Current weather for a city; city string City name; unit string celsius or fahrenheit
get_forecast; Weather forecast for the next days; city string City name; days integer Days ahead,
  1-10; unit string celsius or fahrenheit
search_web; Search the web; query string Search terms; max_results integer How many results;
  language string ISO 639-1 code
send_email; Send an email; to string Recipient address; subject string Subject line; body string
  Message text; cc string Copy to
create_event; Add an event to the calendar; title string Event title; start string ISO 8601 start;
  end string ISO 8601 end; location string Where
list_events; List calendar events in a range; from_date string ISO date; to_date string ISO date;
  calendar string Calendar name
convert_currency; Convert an amount between currencies; amount number Amount; from_currency string
  ISO 4217 code; to_currency string ISO 4217 code
get_stock_price; Latest price of a stock; symbol string Ticker symbol; exchange string Exchange code
book_flight; Book a flight; origin string IATA airport code; destination string IATA airport code;
  date string ISO date; passengers integer Number of passengers
find_restaurants; Find restaurants nearby; location string Address or city; cuisine string Kind of
  food; price_level integer 1 to 4; open_now boolean Only open ones
translate_text; Translate text; text string Text to translate; target_language string ISO 639-1
  code; source_language string ISO 639-1 code
set_reminder; Set a reminder; message string What to remember; time string ISO 8601 time; repeat
  string none, daily or weekly
get_directions; Directions between two places; origin string Start address; destination string
  End address; mode string driving, walking, transit or cycling
read_file; Read a text file; path string File path; encoding string Text encoding; max_bytes
  integer Read at most this many bytes
write_file; Write a text file; path string File path; content string Text to write; append boolean
  Append instead of replacing
run_sql; Run a read-only SQL query; query string SQL text; database string Database name; limit
  integer Row limit
create_ticket; Open an issue tracker ticket; title string Summary; description string Details;
  priority string low, medium or high; assignee string User name
get_news; Latest news headlines; topic string Topic; country string ISO 3166 code; count integer
  How many headlines
calculate; Evaluate an arithmetic expression; expression string The expression; precision integer
  Decimal places
play_music; Play music; query string Song, artist or album; device string Speaker name; shuffle
  boolean Shuffle the queue
"""
QUESTION = "What is the weather like in Lisbon right now?"
STORY = "Write a long story, at least five paragraphs, about a lighthouse keeper and a storm."


def tools() -> list[dict]:
    out = []
    for line in TOOLS.replace("\n  ", " ").strip().splitlines():
        name, description, *params = (part.strip() for part in line.split(";"))
        properties = {}
        for param in params:
            key, kind, text = param.split(" ", 2)
            properties[key] = {"type": kind, "description": text}
        parameters = {"type": "object", "properties": properties, "required": list(properties)[:1]}
        function = {"name": name, "description": description, "parameters": parameters}
        out.append({"type": "function", "function": function})
    return out


@dataclass
class Sample:
    ttft: float  # seconds from sending to the first chunk with content or a tool-call delta
    tps: float  # decode tokens/s from that chunk to the last
    tokens: int  # completion tokens, as the server counts them
    prompt: int  # prompt tokens, as the server counts them
    called: bool  # the answer was a tool call


Runs = dict[tuple[str, str], list[Sample]]  # by (server, case), one per round


def chat(url: str, user: str, choice: str, n: int, llorch: bool) -> Sample:
    system = f"Request {next(_counter):05d}. You are a helpful assistant."
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "tools": tools(), "tool_choice": choice, "max_tokens": n, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    if not llorch:
        body["cache_prompt"] = False
    started = time.perf_counter()
    first = last = 0.0
    usage: dict = {}
    called = False
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=None) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            usage = chunk.get("usage") or usage
            for choice_ in chunk.get("choices") or []:
                delta = choice_.get("delta") or {}
                called = called or bool(delta.get("tool_calls"))
                if delta.get("content") or delta.get("tool_calls"):
                    last = time.perf_counter()
                    first = first or last
    tokens = usage["completion_tokens"]
    tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return Sample(first - started, tps, tokens, usage["prompt_tokens"], called)


def med(values: list[float], fmt: str = ".1f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    from llorch.worker.models import chat_model_path

    path = Path(ns.model) if ns.model else chat_model_path()
    template = serving.backend.sdist_source(sys.executable) / TEMPLATE
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-tools-"))
    t, c = str(ns.threads), str(ns.ctx_size)
    ports = {"llorch": serving.decode.free_port(), "llama-server": serving.decode.free_port()}
    commands = {
        "llorch": [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path),
                   "--chat-template-file", str(template), "--threads", t, "--parallel", "1",
                   "--ctx-size", c, "--cache-ram", "0", "--port", str(ports["llorch"])],
        "llama-server": [str(serving.llama_server_binary()), "-m", str(path), "--jinja",
                         "--chat-template-file", str(template), "-t", t, "-tb", t, "-np", "1",
                         "-c", c, "--cache-ram", "0", "--no-cache-prompt", "--host", "127.0.0.1",
                         "--port", str(ports["llama-server"])],
    }  # fmt: skip
    runs: Runs = {}
    servers = []
    try:
        for name, cmd in commands.items():
            probe = "/ready" if name == "llorch" else "/health"
            servers.append(serving.start(name, cmd, ports[name], probe, logs))
        for server in servers:  # warm-up
            chat(server.url, QUESTION, "auto", 8, server.name == "llorch")
        for r in range(ns.rounds):  # the servers take turns going first; auto and none too
            cases = ("ttft", "auto", "none") if r % 2 == 0 else ("ttft", "none", "auto")
            order = servers if r % 2 == 0 else servers[::-1]
            for server, case in [(s, case) for s in order for case in cases]:
                user, n = (QUESTION, 32) if case == "ttft" else (STORY, ns.tokens)
                choice = "none" if case == "none" else "auto"
                sample = chat(server.url, user, choice, n, server.name == "llorch")
                runs.setdefault((server.name, case), []).append(sample)
                print(f"[tools] round {r + 1} {server.name:12} {case:4} TTFT "
                      f"{sample.ttft * 1000:.0f} ms, {sample.tokens} tokens, {sample.tps:.1f}/s, "
                      f"prompt {sample.prompt}, tool call {sample.called}, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    finally:
        for server in servers:
            server.proc.terminate()
            server.proc.wait(30)
        shutil.rmtree(logs, ignore_errors=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    home = str(Path.home())
    shown = [" ".join(cmd).replace(sys.executable, ".venv/bin/python").replace(home, "~")
             for cmd in commands.values()]  # fmt: skip
    text = section(ns, runs, path, started, (load_before, load_after), shown)
    print(text)
    if ns.doc:
        write_section(text, BEGIN, END)


def section(ns: argparse.Namespace, runs: Runs, path: Path, started: datetime,
            load: tuple[str, str], commands: list[str]) -> str:  # fmt: skip
    def m(server: str, case: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in runs[server, case])

    args = " ".join(["bench/tools.py", *sys.argv[1:]])
    lines = [BEGIN, "## Tool calling: 20 tools, llorch vs llama-server", ""]
    lines += [
        f"Generated by `.venv/bin/python {args}` on {started:%Y-%m-%d %H:%M} UTC; model "
        f"`{path.name}`, Qwen 2.5's chat template on both, threads {ns.threads}, one slot, "
        f"context {ns.ctx_size}, prompt caches off, {ns.rounds} rounds; machine: "
        f"{os.cpu_count()} cores, shared; load average before {load[0]}, after {load[1]}.",
        "",
        "Cells: median [min, max]. Time to first token: from sending a streamed "
        "`/v1/chat/completions` with 20 tools to the first chunk carrying content or a "
        "tool-call delta. Decode: tokens/s from that chunk to the last, the server's "
        f"`completion_tokens` (at most {ns.tokens}, temperature 0) over the client's clock.",
        "",
        "| measure | llorch | llama-server | llorch / llama-server |",
        "|---|---|---|---|",
    ]
    rows = [("time to first token, question (ms)", "ttft", "ttft", 1000.0),
            ("time to first token, story (ms)", "auto", "ttft", 1000.0),
            ("decode tokens/s, tools, auto (lazy grammar)", "auto", "tps", 1.0),
            ("decode tokens/s, tools, tool_choice none", "none", "tps", 1.0)]  # fmt: skip
    for label, case, field, scale in rows:
        fmt = ".0f" if field == "ttft" else ".1f"
        cells = [med([getattr(s, field) * scale for s in runs[k, case]], fmt) for k in SERVERS]
        ratio = m("llorch", case, field) / m("llama-server", case, field)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f}x |")
    # auto against none of the same round (run back to back): less drift than medians.
    paired = {k: [a.tps / b.tps for a, b in zip(runs[k, "auto"], runs[k, "none"], strict=True)]
              for k in SERVERS}  # fmt: skip
    lines.append(f"| decode, auto / none of the same round | {med(paired['llorch'], '.2f')} | "
                 f"{med(paired['llama-server'], '.2f')} | |")  # fmt: skip
    lines += ["", "| server | case | prompt tokens | completion tokens | tool-call answers |"]
    lines += ["|---|---|---|---|---|"]
    for (server, case), samples in runs.items():
        calls = sum(s.called for s in samples)
        lines.append(f"| {server} | {case} | {m(server, case, 'prompt'):.0f} | "
                     f"{m(server, case, 'tokens'):.0f} | {calls} of {len(samples)} |")  # fmt: skip
    ttft = m("llorch", "ttft", "ttft") / m("llama-server", "ttft", "ttft")
    lines += ["", "Targets (#16):", ""]
    lines.append(f"- time to first token with 20 tools, llorch ≤ 1.0x llama-server: {ttft:.2f}x, "
                 + ("met" if ttft <= 1.0 else "**missed**"))  # fmt: skip
    for server in SERVERS:
        speed = statistics.median(paired[server])
        verdict = "" if server != "llorch" else (", met" if speed >= 0.95 else ", **missed**")
        lines.append(f"- {server}: decode with the lazy grammar at {speed:.2f}x tool_choice none's "
                     f"speed, median of rounds (target for llorch ≥ 0.95x){verdict}")  # fmt: skip
    lines += ["", "Commands (ports picked free at each run):", ""]
    lines += [f"- `{cmd}`" for cmd in commands]
    lines += [
        "",
        "- Every request's system message starts with a unique number; llama-server also gets "
        "`cache_prompt: false`. Both read every prompt whole.",
        "- The question is one a tool could answer; the story is one the model answers in text, "
        "so `auto` measures decoding while the lazy grammar waits for its trigger.",
        "- The machine is shared with other work: read the ratios with the [min, max] spread.",
    ]
    return "\n".join([*lines, END])


SERVERS = ("llorch", "llama-server")

if __name__ == "__main__":
    main()
