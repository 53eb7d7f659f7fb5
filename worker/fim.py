"""Fill-in-the-middle prompts: the token sequence llama-server builds for `/infill`.

Everything here follows llama-server's format_prompt_infill (tools/server/server-common.cpp in
the llama.cpp that llama-cpp-python vendors), token for token:

    [extra] [BOS] FIM_PRE prefix prompt FIM_SUF suffix FIM_MID

where `extra` is the repository-level context (arXiv 2409.12186), when the model has the tokens:

    FIM_REP "myproject\\n" (FIM_SEP "<filename>\\n" <text>)... FIM_SEP "filename\\n"

and, without FIM_SEP, each chunk behind a "\\n\\n--- snippet ---\\n\\n" separator. The project and
current file names are llama-server's fixed placeholders. `prompt` (the text after the prefix
on the cursor's line, say) goes after the prefix, before FIM_SUF, as llama-server's code puts
it (its comment shows it after FIM_MID). SPM order (llama-server's --spm-infill) puts the
suffix first: FIM_SUF suffix FIM_PRE prefix prompt FIM_MID.

Trimming, as llama-server does it with its batch size `n_batch`: the prefix keeps its last
3/4 * n_batch tokens, the suffix its first n_batch/4 - 2 - len(prompt) tokens, and the extra
context its last n_ctx - n_batch - 2 * n_predict tokens, so the chunks listed first (farthest
from the cursor) go first. Beyond llama-server: the extra context is also cut so that the
prompt and the tokens asked for fit the context (where llama-server would refuse the request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llorch.worker.backend.protocol import FimTokens

# llama-server's fixed names (format_prompt_infill: "TODO: make project name an input").
REPO_NAME = "myproject\n"
CURRENT_FILE = "filename\n"
DEFAULT_FILENAME = "tmp"  # an extra chunk without a filename
CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"  # between chunks when there is no FIM_SEP
# llama-server's default --batch-size, which bounds the prefix and suffix it keeps.
LLAMA_SERVER_BATCH = 2048

# text, parse_special -> tokens, without BOS/EOS
Tokenize = Callable[[str, bool], Awaitable[list[int]]]


@dataclass(frozen=True)
class InfillText:
    """What an editor sends: the code before and after the cursor, the text to continue
    (after the prefix), and other files' text as (filename, text) chunks, farthest first."""

    prefix: str
    suffix: str
    prompt: str = ""
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InfillTokens:
    """InfillText tokenized as llama-server tokenizes it."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    prompt: tuple[int, ...] = ()
    extra: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()  # (filename + "\n", text)
    repo_name: tuple[int, ...] = ()
    current_file: tuple[int, ...] = ()
    chunk_separator: tuple[int, ...] = ()


@dataclass(frozen=True)
class Infill:
    tokens: list[int]
    dropped_prefix: int  # tokens cut from the prefix's start
    dropped_suffix: int  # from the suffix's end
    dropped_extra: int  # from the extra context's start


def missing(fim: FimTokens) -> list[str]:
    """The FIM tokens an infill needs that the model lacks (llama-server refuses /infill
    without them)."""
    needed = {"prefix": fim.pre, "suffix": fim.suf, "middle": fim.mid}
    return [name for name, token in needed.items() if token is None]


async def tokenize(text: InfillText, tokenize: Tokenize) -> InfillTokens:
    """Each part tokenized as llama-server does: the prompt with special tokens parsed
    (tokenize_input_prompts), everything else as plain text (tokenize_mixed and
    common_tokenize with parse_special false), none with BOS."""
    extra = []
    for filename, chunk in text.extra:
        name = await tokenize((filename or DEFAULT_FILENAME) + "\n", False)
        extra.append((tuple(name), tuple(await tokenize(chunk, False))))
    return InfillTokens(
        prefix=tuple(await tokenize(text.prefix, False)),
        suffix=tuple(await tokenize(text.suffix, False)),
        prompt=tuple(await tokenize(text.prompt, True)) if text.prompt else (),
        extra=tuple(extra),
        repo_name=tuple(await tokenize(REPO_NAME, False)),
        current_file=tuple(await tokenize(CURRENT_FILE, False)),
        chunk_separator=tuple(await tokenize(CHUNK_SEPARATOR, False)),
    )


def _extra(fim: FimTokens, parts: InfillTokens) -> list[int]:
    out: list[int] = []
    if fim.rep is not None:
        out += [fim.rep, *parts.repo_name]
    for name, text in parts.extra:
        out += [fim.sep, *name] if fim.sep is not None else list(parts.chunk_separator)
        out += text
    if fim.sep is not None:
        out += [fim.sep, *parts.current_file]
    return out


def assemble(
    fim: FimTokens,
    parts: InfillTokens,
    *,
    n_batch: int,
    n_predict: int,
    n_ctx: int,
    spm: bool = False,
) -> Infill:
    """The prompt's tokens (llama-server's format_prompt_infill; see the module's docstring).
    `n_predict` < 1: no token count asked for (llama-server's -1)."""
    if fim.pre is None or fim.suf is None or fim.mid is None:
        raise ValueError(f"no FIM {', '.join(missing(fim))} token")
    extra = _extra(fim, parts)
    prefix, suffix, prompt = parts.prefix, parts.suffix, parts.prompt
    prefix_take = min(len(prefix), 3 * (n_batch // 4))
    suffix_take = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    extra_take = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra))

    head = [fim.pre, *prefix[len(prefix) - prefix_take :], *prompt]
    tail = [fim.suf, *suffix[:suffix_take]]
    first, second = (tail, head) if spm else (head, tail)
    if fim.bos is not None:
        first = [fim.bos, *first]
    core = [*first, *second, fim.mid]
    # Room for what is asked for (at least one token); llama-server's budget leaves it
    # whenever n_predict >= 2 and the prompt fits n_batch / 4.
    extra_take = max(0, min(extra_take, n_ctx - len(core) - max(n_predict, 1)))
    return Infill(
        tokens=[*extra[len(extra) - extra_take :], *core],
        dropped_prefix=len(prefix) - prefix_take,
        dropped_suffix=len(suffix) - suffix_take,
        dropped_extra=len(extra) - extra_take,
    )


def fim_batch(n_ctx: int) -> int:
    """The window the prefix and suffix share: llama-server's default batch size, but at most
    half the context, so that a small context keeps room for other files and the answer."""
    return min(LLAMA_SERVER_BATCH, n_ctx // 2)
