"""Several models in one worker: each has its own engine (scheduler thread, slots, queue);
requests are routed by the model they name.

Models are registered at start (`--model NAME=PATH`, repeatable) and only those can be
loaded: a request never names a file. At most `--max-models` are loaded at once; loading
another unloads the least recently used idle one. A model unused for `--keep-alive` seconds
is unloaded. A request for a registered model that is not loaded loads it first (as Ollama
does); `POST /models/load` and `/models/unload` do it explicitly.

With no --model, the worker registers two models: the default model (Gemma 3 270M, a base
model) and a built-in chat model (SmolLM2-135M-Instruct), which loads on its first request and
is where chat requests that name no model go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llorch.worker.backend.errors import (
    NotReadyError,
    OutOfMemoryError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.engine import Engine
from llorch.worker.scheduler import State

log = logging.getLogger("llorch.fleet")


class ModelNotServed(WorkerError):
    code = "MODEL_NOT_FOUND"
    status = 404
    openai_code = "model_not_found"

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(
            f"the model {name[:64]!r} is not served; served: {', '.join(served)}",
            param="model",
            value=name,
        )


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name and what --model gave (a GGUF, a folder, a repo id, or
    None for the default model)."""

    name: str | None  # None: one unnamed model, called by its GGUF's name once loaded
    source: str | None
    # Registered by the worker itself, not by --model (the default set-up's chat model): loaded
    # on its first request, dropped again when that load fails (so that it never turns the
    # worker's state to error), and not counted when a fleet of one model takes any name.
    builtin: bool = False


@dataclass
class _Served:
    entry: ModelEntry
    engine: Engine | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Loaded for a request (on demand): requests wait for the load. The models loaded at
    # start are not waited for: until they are ready, requests get 503 NOT_READY, as a worker
    # that is starting answers.
    on_demand: bool = False


# What a model needs in memory before it is loaded (bytes), or None when unknown (a folder
# not converted yet); and what the machine has free.
Footprint = Callable[[ModelEntry], int | None]


class Fleet:
    def __init__(
        self,
        entries: list[ModelEntry],
        make_engine: Callable[[ModelEntry], Engine],
        *,
        max_loaded: int = 0,
        keep_alive_s: float = 0.0,
        footprint: Footprint | None = None,
        free_memory: Callable[[], int | None] | None = None,
        default_chat: str | None = None,
    ) -> None:
        self._served = {e.name: _Served(e) for e in entries}
        self._order = [e.name for e in entries]  # the first is the default model
        # Where chat requests that name no model go (None: the default model, as others).
        self.default_chat = default_chat
        self._make_engine = make_engine
        self.max_loaded = max_loaded or len(entries)
        self.keep_alive_s = keep_alive_s
        self._footprint = footprint
        self._free_memory = free_memory
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False

    # -- names -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Served names: an unnamed model by its GGUF's name once it is loaded."""
        return [self._display(self._served[key]) for key in self._order]

    def _display(self, served: _Served) -> str:
        if served.entry.name is not None:
            return served.entry.name
        model = served.engine.model if served.engine is not None else None
        return model.name if model is not None else (served.entry.source or "default")

    def _resolve(self, name: str | None) -> _Served:
        if name is None:
            return self._served[self._order[0]]
        for key in self._order:
            if self._display(self._served[key]) == name:
                return self._served[key]
        chosen = [key for key in self._order if not self._served[key].entry.builtin]
        if len(chosen) == 1:
            # One model chosen (built-in ones aside): whatever other name a client sends is
            # that model (OpenAI's clients always send one).
            return self._served[chosen[0]]
        raise ModelNotServed(name, self.names())

    # -- engines ---------------------------------------------------------------------------

    @property
    def default(self) -> Engine | None:
        return self._served[self._order[0]].engine

    def loaded(self) -> dict[str, Engine]:
        return {
            self._display(s): s.engine
            for s in (self._served[k] for k in self._order)
            if s.engine is not None
        }

    def states(self) -> dict[str, str]:
        return {
            self._display(s): (s.engine.state.value if s.engine is not None else "unloaded")
            for s in (self._served[k] for k in self._order)
        }

    async def engine(self, name: str | None) -> Engine:
        """The engine of the named model, loaded first when it is not (waiting for the load
        to end); it counts as used now."""
        served = self._resolve(name)
        if served.engine is None:
            await self._load(served)
        served.last_used = time.monotonic()
        assert served.engine is not None
        engine = served.engine
        if served.on_demand and engine.state is State.LOADING:
            await asyncio.to_thread(engine.wait_loaded)
        if served.entry.builtin and engine.state is State.ERROR:
            # The request hears why (e.g. offline and not fetched yet); the worker's other
            # models stay ready, and the next request tries again.
            error = engine.health().error
            async with served.lock:
                if served.engine is engine:
                    served.engine = None
            await engine.stop()
            if error is not None:
                raise error
        return engine

    async def chat_engine(self, name: str | None) -> Engine:
        """The engine a chat request goes to: the one it names, else the default chat model
        (with no --model, SmolLM2-135M-Instruct: the default model, Gemma 3 270M, is a base
        model that does not chat), else the default model."""
        if self.default_chat is not None and (name is None or name not in self.names()):
            # OpenAI's clients always send a model name; in the default set-up a name that is
            # not served means "the model that chats", not the base model.
            return await self.engine(self.default_chat)
        return await self.engine(name)

    def served_name(self, engine: Engine) -> str | None:
        """The name `engine`'s model is served under (what replies name as their model)."""
        for key in self._order:
            served = self._served[key]
            if served.engine is engine:
                return self._display(served)
        return None

    async def load(self, name: str) -> Engine:
        served = self._resolve(name)
        if served.engine is None:
            await self._load(served)
        assert served.engine is not None
        return served.engine

    async def unload(self, name: str) -> bool:
        """Unload a model (its queued and running jobs are cancelled). False when it was
        not loaded."""
        served = self._resolve(name)
        async with served.lock:
            if served.engine is None:
                return False
            engine, served.engine = served.engine, None
        await engine.stop()
        log.info("model %s unloaded", self._display(served))
        return True

    async def _load(self, served: _Served) -> None:
        if self._stopping:
            raise ShuttingDownError("the worker is shutting down")
        async with served.lock:
            if served.engine is not None:
                return
            victims = self._victims()
            self._check_fits(served, victims)
            for victim in victims:
                await self.unload(self._display(victim))
            engine = self._make_engine(served.entry)
            engine.start()
            served.engine, served.on_demand = engine, True
            served.last_used = time.monotonic()

    def _victims(self) -> list[_Served]:
        """Idle loaded models to unload, least recently used first, to stay within max."""
        loaded = [s for s in self._served.values() if s.engine is not None]
        excess = len(loaded) + 1 - self.max_loaded
        if excess <= 0:
            return []
        idle = sorted(
            (s for s in loaded if s.engine is not None and s.engine.idle()),
            key=lambda s: s.last_used,
        )
        if len(idle) < excess:
            raise NotReadyError(
                f"{self.max_loaded} models are loaded (--max-models) and busy; none can be "
                "unloaded for another now: retry when one is idle"
            )
        return idle[:excess]

    def _check_fits(self, served: _Served, victims: list[_Served]) -> None:
        """Refuse, with the numbers, a load that would not fit even after the unloads, before
        anything is unloaded."""
        if self._footprint is None or self._free_memory is None:
            return
        needed = self._footprint(served.entry)
        free = self._free_memory()
        if needed is None or free is None:
            return
        freed = sum(self._footprint(v.entry) or 0 for v in victims)
        if needed > free + freed:
            raise OutOfMemoryError(
                f"out of memory: {self._display(served)} needs about {needed / 2**30:.2f} GiB "
                f"(weights and KV cache); {free / 2**30:.2f} GiB is free"
                + (
                    f" and unloading {len(victims)} model(s) frees {freed / 2**30:.2f}"
                    if freed
                    else ""
                ),
                device="host",
                needed_bytes=needed,
                free_bytes=free + freed,
            )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the first --max-models models (built-in ones wait for their first request);
        start unloading idle ones (--keep-alive)."""
        chosen = [key for key in self._order if not self._served[key].entry.builtin]
        for key in chosen[: self.max_loaded]:
            served = self._served[key]
            served.engine = self._make_engine(served.entry)
            served.engine.start()
        if self.keep_alive_s > 0:
            self._reaper = asyncio.ensure_future(self._reap())

    async def stop(self) -> None:
        self._stopping = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(e.stop() for e in self.loaded().values()))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.keep_alive_s / 2))
            now = time.monotonic()
            for served in list(self._served.values()):
                engine = served.engine
                if (
                    engine is not None
                    and engine.idle()
                    and now - served.last_used >= self.keep_alive_s
                ):
                    log.info(
                        "model %s idle for %.0fs: unloading",
                        self._display(served),
                        now - served.last_used,
                    )
                    await self.unload(self._display(served))

    # -- the worker as a whole (drain on SIGTERM, the ready callback) -----------------------

    def drain(self) -> None:
        for engine in self.loaded().values():
            engine.drain()

    def cancel_all(self) -> None:
        for engine in self.loaded().values():
            engine.cancel_all()

    def wait_drained(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for engine in list(self.loaded().values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not engine.wait_drained(left):
                return False
        return True

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return all(e.wait_loaded(timeout) for e in self.loaded().values())
