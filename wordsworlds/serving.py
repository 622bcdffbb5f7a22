"""Serving a room: one step loop per model, a waiting line, and a fair share of the cores.

Fifty phones press Run within the same minute. Each request running alone would make fifty
slow jobs fight over two cores; instead each model gets ONE worker thread, a `StepLoop`, that
advances every active request by one step per iteration (iteration-level, or "continuous",
batching, as in Orca, Yu et al. 2022): the words engine computes every active sequence's next
token in one forward pass, the worlds engine every active render's next denoising step in one
U-Net call. Requests join and leave between steps, so a newcomer's first token or first
preview waits for one step, not for the others to finish.

Admission: up to `max_batch` requests are stepped together; the next ones wait in a line (each
told its place and an estimate of the wait); past `capacity` a request is refused at once with
`RoomFull`, a friendly message, never a time-out. A request that is cancelled or whose reader
went away leaves the batch at the next step.

The cores: the loops of the two models take turns on one `CORES` lock (first come, first served,
except that a loop may send its newcomers' first steps to the head of the line), so at any moment
one step runs, with all of torch's threads: two loops computing at once on two cores would each
run at a fraction of the speed and both get slower.

    >>> loop = MyLoop("words", max_batch=32, capacity=64)   # a subclass: start(), step()   # doctest: +SKIP
    >>> request = loop.submit(my_request)                    # RoomFull when the room is full  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import queue
import threading
import time
from dataclasses import dataclass, field

from .errors import InputError

# Measured on the 2-core CPU (benchmarks/bench_room.py): beyond these, a run waits longer than a
# person will, and the cores are already busy with every step's batch.
MAX_BATCH = 64  # requests stepped together per model: a room of fifty starts at once
CAPACITY = 96  # requests admitted per model, running or waiting in line


def release_memory() -> None:
    """Hand freed memory back to the system. A full room's batches (key/value caches, activations)
    leave glibc's heap holding hundreds of MB it keeps for reuse; `malloc_trim` returns it, so the
    server's memory falls back towards its idle size after the room has gone."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def tune_garbage_collector() -> None:
    """Keep Python's garbage collector from holding the interpreter while a room is served; call once the
    models are loaded. While a collection runs, no stream moves and no request is answered, and a full one
    walks every object that might sit in a reference cycle: about 650,000 once the models are loaded.
    Those are frozen (`gc.freeze`: never walked again), and the young generation is collected every
    10,000 allocations instead of 700, so the older ones fill, and get walked, far less often. Measured
    in the web process as 800 visitors arrive (`benchmarks/bench_gc.py`): Python's default paused it 13
    times for over 100 ms (the longest 0.8 s); freezing alone made the full collections smaller but more
    frequent (about twenty pauses over 100 ms); frozen with this threshold, one."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class RoomFull(InputError):
    """Refused because the room is full: said at once, with when to try again."""

    @classmethod
    def of(cls, name: str, capacity: int) -> "RoomFull":
        return cls(f"The room is full: {capacity} {name} runs are going or waiting. Try again in a moment.")


class FairLock:
    """A lock handed out first come, first served (threading.Lock promises no order: one loop
    releasing and re-taking it at once could starve the other)."""

    def __init__(self):
        self._turns = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self, ahead: bool = False) -> None:
        """Wait for the lock, at the end of the line, or with `ahead` at its head (next after the holder)."""
        me = object()
        with self._turns:
            if ahead:
                self._waiting.appendleft(me)
            else:
                self._waiting.append(me)
            self._turns.wait_for(lambda: not self._held and self._waiting[0] is me)
            self._waiting.popleft()
            self._held = True

    def release(self) -> None:
        with self._turns:
            self._held = False
            self._turns.notify_all()

    @contextlib.contextmanager
    def ahead(self):
        """Hold the lock, asked for at the head of the line."""
        self.acquire(ahead=True)
        try:
            yield self
        finally:
            self.release()


CORES = FairLock()  # one step of one model at a time, with all of torch's threads


@dataclass(frozen=True)
class InLine:
    """A request waiting for a place in the batch: its place (1 = next) and the estimated wait."""

    position: int
    about_s: float

    def message(self) -> str:
        return f"You are {self.position} in line, about {max(1, round(self.about_s))} s."


_END = object()  # marks the end of a request's stream
_SLOT = object()  # in the queue: "take the newest replaceable item now"
_EMPTY = object()


@dataclass(eq=False)
class Request:
    """One request in a loop: what the subclass needs (`job`) and the channel back to its reader."""

    job: object
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by the reader: Stop, or gone
    state: object = None  # the subclass's per-request state, made by start()
    position: int = 0  # its place in line when last told (0: not waiting)
    skip_stale: bool = False  # the reader wants only the newest of the frames it has not taken (see emit)
    _slot: object = None  # the newest replaceable item not yet taken (_EMPTY: none)
    _slot_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._slot = _EMPTY

    def emit(self, item, replaceable: bool = False) -> None:
        """Send `item` to the reader. A `replaceable` item (a preview frame) that the reader has not taken
        yet is replaced by the next one: a reader that falls behind (a slow phone, a busy server) skips
        to the newest frame instead of drawing every stale one."""
        if not (replaceable and self.skip_stale):
            self.out.put(item)
            return
        with self._slot_lock:
            waiting = self._slot is not _EMPTY
            self._slot = item
        if not waiting:
            self.out.put(_SLOT)

    def _take_slot(self):
        with self._slot_lock:
            item, self._slot = self._slot, _EMPTY
        return item

    def finish(self, item=None) -> None:
        """The last item (a result, or an exception to raise in the reader), then the end."""
        if item is not None:
            self.out.put(item)
        self.out.put(_END)

    def items(self):
        """What the loop emits for this request, as the reader's iterator; leaving it early cancels."""
        try:
            while True:
                item = self.out.get()
                if item is _END:
                    return
                if item is _SLOT:
                    item = self._take_slot()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled.set()


class StepLoop:
    """One worker thread stepping a batch of requests. Subclasses define `start` (prepare one
    request, e.g. its prompt's cache; may raise) and `step` (advance the batch by one step and
    return the requests that ended)."""

    def __init__(self, name: str, max_batch: int = MAX_BATCH, capacity: int = CAPACITY, cores: FairLock = CORES,
                 turn_batch: int | None = None, newcomers_ahead: bool = False):
        if not 1 <= max_batch <= capacity:
            raise ValueError("need 1 <= max_batch <= capacity")
        self.name, self.max_batch, self.capacity, self.cores = name, max_batch, capacity, cores
        self._line: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._changed = threading.Condition()
        self._gap_s = 0.0  # running mean of the time between two requests ending (for the wait estimate)
        self._last_end = 0.0
        self.largest_batch = 0  # the most requests stepped together so far (for the meters)
        # Requests stepped per turn on the cores (None: the whole batch at once). A turn of a big batch holds the
        # cores for a long time, and the other model's loop waits for it (see worlds.batching.RENDER_TURN).
        self.turn_batch = turn_batch
        # Whether a turn with newcomers in it goes ahead of the other loop's waiting turn: for a model whose first
        # step for a whole room is cheap beside the other's (see worlds.batching.RenderLoop).
        self.newcomers_ahead = newcomers_ahead
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the readers' side

    def submit(self, job, skip_stale: bool = False) -> Request:
        """Queue a request; RoomFull (at once) when `capacity` requests are already running or waiting."""
        with self._changed:
            if len(self._line) + len(self._active) >= self.capacity:
                raise RoomFull.of(self.name, self.capacity)
            request = Request(job, skip_stale=skip_stale)
            self._line.append(request)
            self._tell_line()
            self._changed.notify_all()
        return request

    def stream(self, job, line_updates: bool = False, skip_stale: bool = False):
        """Submit `job` and yield what the loop emits for it (InLine items only if `line_updates`; with
        `skip_stale`, a frame not yet taken when the next comes is skipped)."""
        for item in self.submit(job, skip_stale).items():
            if line_updates or not isinstance(item, InLine):
                yield item

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._changed:
            return len(self._active), len(self._line)

    # ----------------------------------------------------------------- the worker's side

    def start(self, request: Request) -> None:
        """Prepare one joining request (its state); raise to refuse it."""
        raise NotImplementedError

    def step(self, active: list[Request]) -> list[Request]:
        """Advance every active request by one step; return the ones that ended (already finished)."""
        raise NotImplementedError

    def _tell_line(self) -> None:
        """Tell each waiting request its place and the wait, when its place changed (lock held).
        Those the next iteration admits (free places in the batch) are not told anything."""
        gap = self._gap_s or 1.0
        free = self.max_batch - len(self._active)
        for index, request in enumerate(self._line):
            position = index + 1 - free
            if position >= 1 and position != request.position:
                request.position = position
                request.emit(InLine(position, position * gap))

    def _admit(self) -> list[Request]:
        with self._changed:
            self._line = collections.deque(r for r in self._line if not r.cancelled.is_set())
            if not self._active and not self._line:
                release_memory()  # the room has emptied: give back what its batches took
            while not self._active and not self._line:
                self._changed.wait()
            joining = []
            while self._line and len(self._active) + len(joining) < self.max_batch:
                joining.append(self._line.popleft())
            if joining:
                self._tell_line()
            return joining

    def _run(self) -> None:
        while True:
            joining = self._admit()
            # The newcomers' start and the batch's first turn share one hold on the cores.
            with self._cores(ahead=bool(joining)):
                turns = self._turns(self._start(joining))
                ended, failed = self._step(turns[0][0], []) if turns else ([], False)
            for turn, new in turns[1:]:
                if failed:
                    break
                with self._cores(ahead=new):  # between two turns the other model's loop may take the cores
                    ended, failed = self._step(turn, ended)
            if ended:
                self._count_ends(len(ended))
                with self._changed:
                    self._active = [r for r in self._active if all(r is not e for e in ended)]

    def _cores(self, ahead: bool):
        """The cores for one turn: asked for at the head of their line for a turn with newcomers in it, if this
        loop's newcomers go ahead; else first come, first served."""
        return self.cores.ahead() if ahead and self.newcomers_ahead else self.cores

    def _start(self, joining: list[Request]) -> list[Request]:
        """Start the joining requests (cores held); those that start join the batch and are returned."""
        started = []
        for request in joining:
            try:
                self.start(request)
                started.append(request)
            except BaseException as error:  # noqa: BLE001  (the reader re-raises it)
                request.finish(error)
        with self._changed:
            self._active += started
        self.largest_batch = max(self.largest_batch, len(self._active))
        return started

    def _turns(self, newcomers: list[Request]) -> list[tuple[list[Request], bool]]:
        """The parts of the batch stepped one turn on the cores at a time (the whole batch, or `turn_batch`
        at a time, in the order they joined), each with whether newcomers are in it. (Newcomers put first
        sent the web process a burst's first frames all at once, and its refusals of the excess slowed from
        0.8 to 1.0-1.2 s in benchmarks/bench_room.py --burst.)"""
        active = list(self._active)
        if not self.turn_batch:
            return [(active, bool(newcomers))] if active else []
        new = {id(r) for r in newcomers}
        size = self.turn_batch
        turns = [active[i : i + size] for i in range(0, len(active), size)]
        return [(turn, any(id(r) in new for r in turn)) for turn in turns]

    def _step(self, turn: list[Request], ended: list[Request]) -> tuple[list[Request], bool]:
        """Step one turn (cores held): (the requests ended so far, whether the step failed). A failed step
        fails the whole batch, not the loop."""
        try:
            return ended + self.step(turn), False
        except BaseException as error:  # noqa: BLE001  (the readers re-raise it)
            self.reset()
            failed = [r for r in self._active if all(r is not e for e in ended)]
            for request in failed:
                request.finish(error)
            return ended + failed, True

    def reset(self) -> None:
        """Forget the batch after a failed step (subclasses drop their per-batch state)."""

    def _count_ends(self, count: int) -> None:
        """Update the mean time between two requests ending, which prices a place in the line."""
        now = time.perf_counter()
        if self._last_end:
            gap = (now - self._last_end) / count
            self._gap_s = gap if not self._gap_s else 0.8 * self._gap_s + 0.2 * gap
        self._last_end = now


@dataclass(eq=False)
class RunJob:
    """A request for a RunLoop: its run (with `.advance(row)` and `.done`), made and checked by the engine."""

    run: object
    should_stop: object = None  # Callable[[], bool] | None, checked before every step


class RunLoop(StepLoop):
    """The step loop of the two-by-two's small engines (words.captions, worlds.painter), whose requests all
    share one sequence layout: one `engine.forward(runs)` pass for the batch, then each run advances on
    its own row, with its own settings and random generator; `engine.add_pictures(frames)`, if the engine
    has it, decodes the frames' pictures in one call. No per-batch state: a run joins or leaves between
    any two steps."""

    def __init__(self, name: str, engine, max_batch: int = MAX_BATCH, capacity: int = CAPACITY):
        self.engine = engine
        super().__init__(name, max_batch, capacity)

    def start(self, request: Request) -> None:
        request.state = request.job.run

    def step(self, active: list[Request]) -> list[Request]:
        ended, going = [], []
        for request in active:
            stop = request.job.should_stop
            if request.cancelled.is_set() or (stop is not None and stop()):
                request.finish()
                ended.append(request)
            else:
                going.append(request)
        if not going:
            return ended
        rows = self.engine.forward([request.state for request in going])
        frames = [request.state.advance(row) for request, row in zip(going, rows)]
        if hasattr(self.engine, "add_pictures"):
            self.engine.add_pictures(frames)
        for request, frame in zip(going, frames):
            # Frames are cumulative (each holds every word or cell so far), so a slow reader may skip to the
            # newest; never the last one, nor one that carries a freshly decoded picture.
            request.emit(frame, replaceable=not frame.done and getattr(frame, "picture", None) is None)
            if frame.done:
                request.finish()
                ended.append(request)
        return ended


_RUN_LOOPS: dict[int, RunLoop] = {}
_RUN_LOOPS_LOCK = threading.Lock()


def run_loop(engine, name: str) -> RunLoop:
    """The engine's model's one RunLoop (a worker thread), made by the first engine that asks."""
    with _RUN_LOOPS_LOCK:
        if id(engine.model) not in _RUN_LOOPS:
            _RUN_LOOPS[id(engine.model)] = RunLoop(name, engine)
        return _RUN_LOOPS[id(engine.model)]
