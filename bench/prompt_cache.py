"""Time to first token of a conversation's second turn, side by side in one run.

    python bench/prompt_cache.py [--model PATH] [--threads 2] [--turn-tokens 1500] [--rounds 3]

A ~1,500-token first turn is answered on one slot; the second turn (the whole conversation
plus a short question) then arrives while that slot is busy, so it lands on the other slot.
Time to first token of the second turn:
  cold       a worker that has never seen the conversation (the whole prompt is read)
  no-cache   --cache-ram 0: the other slot holds something else, the prompt is read again
  cache      --cache-ram on: the first turn's KV state is copied in from host RAM
The target is cache <= 0.2x cold. Rounds are interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from llorch.worker.models import resolve_model

GREEDY = SamplingParams(temperature=0.0)


def conversation(backend: LlamaCppBackend, tokens: int) -> list[int]:
    text = "Here is the inventory of the shop:\n"
    i = 0
    while len(backend.tokenize(text)) < tokens:
        text += f"- item {i}: {i % 7 + 1} boxes of {['nails', 'screws', 'bolts'][i % 3]}\n"
        i += 1
    return backend.tokenize(text + "How many boxes of nails are there?")


def second_turn_ttft(path: Path, threads: int, turn_tokens: int, cache_mib: int) -> float:
    """Seconds from adding turn 2 to its first token, with turn 1's slot busy."""
    backend = LlamaCppBackend()
    options = LoadOptions(
        ctx_size=turn_tokens + 512, parallel=2, threads=threads, cache_bytes=cache_mib << 20
    )
    backend.load(path, options)
    try:
        decoder = backend.decoder()
        turn1 = conversation(backend, turn_tokens)
        answer = [
            e.token_id
            for e in generate(decoder, GenerationRequest(tuple(turn1), 16, GREEDY))
            if isinstance(e, TokenEvent)
        ]
        other = backend.tokenize("Tell me a story about the sea. " * 20)
        list(generate(decoder, GenerationRequest(tuple(other), 2, GREEDY)))
        decoder.add("busy", GenerationRequest(tuple(turn1), 400, GREEDY))
        decoder.step()  # the busy job holds turn 1's slot
        question = backend.tokenize(" And how many of screws?", add_special=False)
        turn2 = tuple(turn1 + answer + question)
        started = time.perf_counter()
        decoder.add("turn2", GenerationRequest(turn2, 1, GREEDY))
        while True:
            for key, event in decoder.step():
                if key == "turn2" and isinstance(event, FinishEvent):
                    return time.perf_counter() - started
    finally:
        backend.close()


def cold_ttft(path: Path, threads: int, turn_tokens: int) -> float:
    backend = LlamaCppBackend()
    backend.load(path, LoadOptions(ctx_size=turn_tokens + 512, parallel=2, threads=threads))
    try:
        turn1 = conversation(backend, turn_tokens)
        prompt = tuple(turn1 + backend.tokenize(" And how many of screws?", add_special=False))
        started = time.perf_counter()
        list(generate(backend.decoder(), GenerationRequest(prompt, 1, GREEDY)))
        return time.perf_counter() - started
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turn-tokens", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = args.model or resolve_model(None)
    runs: dict[str, list[float]] = {"cold": [], "no-cache": [], "cache": []}
    for _ in range(args.rounds):
        runs["cold"].append(cold_ttft(path, args.threads, args.turn_tokens))
        runs["no-cache"].append(second_turn_ttft(path, args.threads, args.turn_tokens, 0))
        runs["cache"].append(second_turn_ttft(path, args.threads, args.turn_tokens, 512))
    cold = statistics.median(runs["cold"])
    print(f"turn 2 of a {args.turn_tokens}-token conversation, on the other slot ({path.name})")
    print(f"{'case':<10} {'TTFT (s)':>9} {'vs cold':>8}")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:<10} {median:>9.3f} {median / cold:>7.2f}x")


if __name__ == "__main__":
    main()
