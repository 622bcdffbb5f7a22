"""The engines the live views stream from, and the process they run in.

The step loops (serving.py) batch a room's requests, but in the web server's process they share
one interpreter lock with it: while the web threads turn fifty streams into messages, a loop
thread waits for the lock between any two of torch's operations, and a batch-50 decode step that
takes 0.29 s alone took 14.8 s beside one busy web thread (measured on the 2-core CPU). So, when
batched, the words and worlds engines run in an `EngineProcess` of their own: the web process
sends each request's prompt and options down a pipe and reads back what the engine yields (the
tokens, the frames, the place in line, the result), one small message each.

    >>> words, worlds = streaming_engines(preset)     # doctest: +SKIP
    >>> for step in words.stream("Name a colour.", options, stats=stats, line_updates=True):  # doctest: +SKIP
    ...     print(step)

`streaming_engines` gives the engine process's proxies when the preset is batched (the app's
default), else the engines themselves, each request running alone in the web process (the
baseline, and ZeroGPU, where each call runs in a GPU process of its own). The proxies stream
as the engines do: the same items, the same `stats`, `should_stop` and line updates; a reader
that leaves cancels its request at the engine's next step.

Why a process and a pipe, not a web server of its own (a model server): the items are Python
objects (pictures, dataclasses) handed to Gradio as they are, one process owns the cores, and
it starts and stops with the app. The engine process loads its own copies of the two models
(the web process keeps its own for the explorer and the hybrid tab): on the offline preset
about 0.7 GB more memory, bought for a server whose busy web threads no longer stall the models.
"""

from __future__ import annotations

import itertools
import os
import pickle
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Listener
from pathlib import Path

from .errors import ModelUnavailable
from .models import JanusModel, load_painter_model
from .presets import Preset
from .serving import CAPACITY, InLine, Request, RoomFull, tune_garbage_collector
from .words.captions import Captioner
from .words.next_token import DecodingOptions, GenerationStats, TextGenerator
from .world.scene import caption, random_scene
from .worlds.diffusion import ImageGenerator, RenderOptions, StepFrame
from .worlds.janus import JanusPainter
from .worlds.painter import Painter

SMALL_LANES = ("words_next_token", "words_masked_diffusion", "worlds_next_token")  # the two-by-two's own engines
START_TIMEOUT_S = 600  # loading the models in the engine process (a first GGUF conversion takes ~25 s)
ENGINE_KEY = "WORDSWORLDS_ENGINE_KEY"  # the one-time key the engine process connects back with


def streaming_engines(preset: Preset) -> tuple:
    """(words, worlds): what tab 1 streams from. Batched, the proxies of the preset's engine process;
    else the engines themselves, each request running alone in this process."""
    if served_apart(preset):
        engines = engine_process(preset)
        return engines.words, engines.worlds
    return TextGenerator.load(preset), ImageGenerator.load(preset)


def two_by_two_engines(preset: Preset) -> dict:
    """The two-by-two's small engines by lane ("words_next_token", "words_masked_diffusion",
    "worlds_next_token"), each with `stream(**arguments)` and `running`: the engine process's proxies
    when served apart, else the engines themselves (batched in this process if the preset is)."""
    if served_apart(preset):
        return engine_process(preset).lanes
    return _small_engines(preset)


def _small_engines(preset: Preset) -> dict:
    return {"words_next_token": Captioner.load(preset, "next_token"),
            "words_masked_diffusion": Captioner.load(preset, "masked_diffusion"),
            "worlds_next_token": load_painter(preset)}


_JANUS_PAINTERS: dict[int, JanusPainter] = {}
_JANUS_LOCK = threading.Lock()


def load_painter(preset: Preset) -> Painter | JanusPainter:
    """The preset's next-token painter: the storybook world's `Painter`, or a `JanusPainter` (worlds/janus.py)
    where the preset names a Janus model; one per loaded model, so that `running` counts every request."""
    parts = load_painter_model(preset)
    if not isinstance(parts, JanusModel):
        return Painter.load(preset)
    with _JANUS_LOCK:
        if id(parts.model) not in _JANUS_PAINTERS:
            _JANUS_PAINTERS[id(parts.model)] = JanusPainter(parts.model, parts.processor, parts.report)
        return _JANUS_PAINTERS[id(parts.model)]


def served_apart(preset: Preset) -> bool:
    """Whether the preset's live views are served by an engine process (batched, and not switched off)."""
    return preset.batched and preset.accel.engine_process


_PROCESSES: dict[Preset, "EngineProcess"] = {}
_PROCESSES_LOCK = threading.Lock()


def engine_process(preset: Preset) -> "EngineProcess":
    """The preset's one engine process, started by the first caller (app.py starts it at launch)."""
    with _PROCESSES_LOCK:
        if preset not in _PROCESSES or not _PROCESSES[preset].alive:
            _PROCESSES[preset] = EngineProcess(preset)
        return _PROCESSES[preset]


class EngineProcess:
    """The words and worlds engines, batched, in a child process; `words` and `worlds` are their proxies.

    The child is a fresh interpreter (`python -c ...serve_engines()`), not a fork (safe beside the
    web server's threads and CUDA) nor a multiprocessing spawn (which would re-run app.py in it). It
    connects back over a local socket with a one-time key and receives the preset."""

    def __init__(self, preset: Preset):
        key = secrets.token_bytes(32)
        self._listener = Listener(family="AF_UNIX", authkey=key)
        package_parent = str(Path(__file__).resolve().parents[1])
        env = os.environ | {ENGINE_KEY: key.hex(),
                            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from wordsworlds.engines import serve_engines; serve_engines()",
             self._listener.address], env=env, stdin=subprocess.DEVNULL)
        self._preset = preset
        self._pipe = None
        self._send_lock = threading.Lock()
        self._open: dict[int, Request] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._gone = False
        self.words = RemoteEngine(self, "words")
        self.worlds = RemoteEngine(self, "worlds")
        self.lanes = {lane: RemoteRuns(self, lane) for lane in SMALL_LANES}
        threading.Thread(target=self._read, name="engines-reader", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._gone

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the engines are loaded; raise what stopped them (e.g. ModelUnavailable)."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.5):
            if self._process.poll() is not None:
                self._gone = True
                raise ModelUnavailable(f"the engine process exited with code {self._process.returncode} "
                                       "before it was ready (its messages are in the server's log)")
            if time.monotonic() > deadline:
                raise ModelUnavailable(f"the engines did not start within {timeout_s:.0f} s")
        if self._failure is not None:
            raise self._failure

    def stream(self, side: str, arguments: tuple, skip_stale: bool,
               should_stop: Callable[[], bool] | None) -> Iterator[tuple]:
        """Start a request in the engine process; yield (item, stats) as they come, (None, stats) last. A
        reader that leaves, or whose `should_stop` says so, cancels it there (it ends at its next step)."""
        self.wait_ready()
        request_id = next(self._ids)
        request = Request(job=side, skip_stale=skip_stale)
        self._open[request_id] = request
        ended = stopping = False
        try:
            self._send(("start", request_id, side, arguments))
            for message in request.items():
                ended = message[0] is None
                yield message
                if ended:
                    return
                if not stopping and should_stop is not None and should_stop():
                    stopping = True
                    self._send(("cancel", request_id))
        finally:
            del self._open[request_id]
            if not ended and not self._gone:
                self._send(("cancel", request_id))

    def _send(self, message) -> None:
        with self._send_lock:
            try:
                self._pipe.send(message)
            except (OSError, ValueError) as error:
                raise ModelUnavailable("the engine process has stopped") from error

    def _read(self) -> None:
        """Take the child's connection, send it the preset, then hand each message from it to its request
        (one thread, in arrival order)."""
        try:
            self._pipe = self._listener.accept()
            self._listener.close()
            self._pipe.send(self._preset)
            while True:
                kind, request_id, *rest = self._pipe.recv()
                if kind == "ready":
                    self._ready.set()
                    continue
                if kind == "failed":  # e.g. a model missing here: said to every run, not retried for each
                    self._failure = rest[0]
                    self._ready.set()
                    return
                request = self._open.get(request_id)
                if request is None:  # its reader has left
                    continue
                if kind == "item":
                    item, stats, replaceable = rest
                    request.emit((item, stats), replaceable)
                elif kind == "done":
                    request.emit((None, rest[0]))
                    request.finish(None)
                else:  # "error"
                    request.finish(rest[0])
        except (EOFError, OSError):  # the engine process is gone: fail whoever waits; the next run starts it again
            self._gone = True
            self._failure = ModelUnavailable("the engine process stopped; the next run starts it again")
            self._ready.set()
            for request in list(self._open.values()):
                request.finish(self._failure)


class RemoteEngine:
    """A proxy for the engine process's words or worlds engine, streaming as the engine does. Past the
    engine's capacity it refuses here, at once, without a round trip to a busy engine process."""

    def __init__(self, process: EngineProcess, side: str, capacity: int = CAPACITY):
        self.process, self.side, self.capacity = process, side, capacity
        self._open = 0  # requests of this web process going or waiting in the engine's line
        self._streaming = 0  # of those, the ones that have started (for the pace of updates)
        self._count_lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._streaming

    def stream(self, prompt: str, options: DecodingOptions | RenderOptions, should_stop=None,
               stats: GenerationStats | None = None, line_updates: bool = False,
               skip_stale: bool = False) -> Iterator:
        """As TextGenerator.stream (words) or ImageGenerator.stream (worlds), served by the engine process."""
        for item, item_stats in self._served((prompt, options, line_updates, skip_stale), skip_stale, should_stop):
            if item_stats is not None and stats is not None:
                vars(stats).update(vars(item_stats))
            if item is not None:
                yield item

    def _served(self, arguments: tuple, skip_stale: bool, should_stop) -> Iterator[tuple]:
        """The engine process's (item, stats) for one request, the last with item None; counted here, and
        refused here (RoomFull) past capacity."""
        with self._count_lock:
            if self._open >= self.capacity:
                raise RoomFull.of(self.side.replace("_", " "), self.capacity)
            self._open += 1
        started = False
        try:
            for item, item_stats in self.process.stream(self.side, arguments, skip_stale, should_stop):
                if item is not None and not started and not isinstance(item, InLine):
                    started = True
                    self._count(streaming=+1)
                yield item, item_stats
                if item is None:
                    return
        finally:
            self._count(open_=-1, streaming=-1 if started else 0)

    def _count(self, open_: int = 0, streaming: int = 0) -> None:
        with self._count_lock:
            self._open += open_
            self._streaming += streaming


class RemoteRuns(RemoteEngine):
    """A proxy for one of the two-by-two's small engines (words.captions.Captioner, worlds.painter.Painter)
    in the engine process: `stream(**arguments)` as the engine's own `stream`."""

    def stream(self, should_stop=None, line_updates: bool = False, skip_stale: bool = False, **arguments) -> Iterator:
        for item, _ in self._served((arguments, line_updates, skip_stale), skip_stale, should_stop):
            if item is not None:
                yield item


# ----------------------------------------------------------------------------- the engine process's side


def serve_engines() -> None:
    """The engine process's entry point: connect back to the web process (the socket's address is the
    first argument, the key in the environment), receive the preset, serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the console stops the web process, which ends this one
    key = bytes.fromhex(os.environ.pop(ENGINE_KEY))
    pipe = Client(sys.argv[1], family="AF_UNIX", authkey=key)
    _serve(pipe, pipe.recv())


def _serve(pipe, preset: Preset) -> None:
    """The engine process: load the two engines (batched), then run each request in a thread of its own
    that forwards what the engine yields; the engines' step loops batch them."""
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            pipe.send(message)

    try:
        engines = {"words": TextGenerator.load(preset), "worlds": ImageGenerator.load(preset)}
        engines |= _small_engines(preset)
        warm_up_engines(engines)
        tune_garbage_collector()
    except BaseException as error:  # noqa: BLE001  (the web process raises it where it waits)
        send(("failed", None, _portable(error)))
        return
    send(("ready", None))
    cancels: dict[int, threading.Event] = {}

    def run(request_id: int, side: str, arguments: tuple) -> None:
        stop = cancels[request_id]
        try:
            if side in SMALL_LANES:
                kwargs, line_updates, skip_stale = arguments
                for item in engines[side].stream(**kwargs, should_stop=stop.is_set, line_updates=line_updates,
                                                 skip_stale=skip_stale):
                    send(("item", request_id, item, None,
                          not isinstance(item, InLine) and not item.done and getattr(item, "picture", None) is None))
                send(("done", request_id, None))
                return
            prompt, options, line_updates, skip_stale = arguments
            if side == "words":
                stats = GenerationStats()
                for item in engines["words"].stream(prompt, options, should_stop=stop.is_set, stats=stats,
                                                    line_updates=line_updates):
                    send(("item", request_id, item, stats, False))
                send(("done", request_id, stats))
            else:
                for item in engines["worlds"].stream(prompt, options, should_stop=stop.is_set,
                                                     line_updates=line_updates, skip_stale=skip_stale):
                    send(("item", request_id, item, None, isinstance(item, StepFrame)))
                send(("done", request_id, None))
        except BaseException as error:  # noqa: BLE001  (re-raised in the web process)
            send(("error", request_id, _portable(error)))
        finally:
            cancels.pop(request_id, None)

    try:
        while True:
            kind, request_id, *rest = pipe.recv()
            if kind == "start":
                cancels[request_id] = threading.Event()
                threading.Thread(target=run, args=(request_id, *rest), daemon=True).start()
            elif kind == "cancel" and request_id in cancels:
                cancels[request_id].set()
    except (EOFError, OSError):  # the web process is gone
        os._exit(0)


def warm_up_engines(engines: dict) -> None:
    """One short run through each engine's step loop before the process says it is ready. A model's first
    passes are slow (torch picks and prepares its kernels, the words engine caches its chat template's head):
    measured on the 2-core CPU, the words loop's first single prefill took 0.33-0.40 s, against 0.21-0.23 s
    in the next room. Without this the first room, the one the speaker asks to try it, pays that."""
    scene = caption(random_scene(random.Random(0)))  # a prompt every engine of the world reads
    runs = [engines["words"].stream("Hello.", DecodingOptions(max_new_tokens=2)),
            engines["worlds"].stream(scene, RenderOptions(steps=2))]
    runs += [engines[lane].stream(prompt=scene) for lane in SMALL_LANES]
    for run in runs:
        for _ in run:
            pass


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives the pipe (InputError, RoomFull, ...), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
