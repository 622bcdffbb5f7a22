"""Words and worlds at once: run the LLM and the diffusion model on one prompt, side by side.

Both engines stream into one queue, so the caller sees a single timeline in the order
things happened: token t beside step t, and what each one cost.

    >>> from wordsworlds.compare import run_side_by_side
    >>> for side, item in run_side_by_side(preset, "a red cat", text_options, render_options):  # doctest: +SKIP
    ...     print(side, item)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from .errors import check_prompt
from .presets import Preset
from .engines import streaming_engines
from .words.next_token import DecodingOptions, GenerationStats, TokenStep
from .worlds.diffusion import RenderOptions, StepFrame

_DONE = object()


def run_side_by_side(
    preset: Preset, prompt: str, text_options: DecodingOptions, render_options: RenderOptions, should_stop=None,
    text_stats: GenerationStats | None = None, line_updates: bool = False,
) -> Iterator[tuple[str, object]]:
    """Yield ("words", TokenStep) and ("worlds", StepFrame | RenderResult) as they happen (and, with
    `line_updates`, (side, InLine) while a side waits for a place in its model's batch, and the worlds
    side skipping frames the reader is too slow to take: a live view)."""
    prompt = check_prompt(prompt)  # here, not inside the engines' threads, so the message reaches the caller
    words, worlds = streaming_engines(preset)
    yield from merge_streams({
        "words": lambda stopped: words.stream(prompt, text_options, should_stop=stopped, stats=text_stats,
                                              line_updates=line_updates),
        "worlds": lambda stopped: worlds.stream(prompt, render_options, should_stop=stopped, line_updates=line_updates,
                                                skip_stale=line_updates),
    }, should_stop)


def merge_streams(streams: dict, should_stop=None) -> Iterator[tuple[str, object]]:
    """Run each `name: start(stopped) -> iterator` in a thread of its own and yield (name, item) in the
    order items arrive. An error in any stream is raised here; leaving early stops them all."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def stopped() -> bool:
        return stop.is_set() or (should_stop is not None and should_stop())

    def pump(name: str, start) -> None:
        try:
            for item in start(stopped):
                events.put((name, item))
        except BaseException as error:  # the consumer re-raises it
            events.put((name, error))
        finally:
            events.put((name, _DONE))

    threads = [threading.Thread(target=pump, args=(name, start), daemon=True) for name, start in streams.items()]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            name, item = events.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield name, item
    finally:
        stop.set()  # a consumer that leaves early (cancel) stops every stream


def timeline_row(item, elapsed_s: float) -> list | None:
    """One row of the shared timeline: [what, index, seconds since the run began, detail].

    `elapsed_s` is read by the consumer on one clock as each event arrives, so the rows are in
    time order by construction (each engine's own clock starts at a different moment)."""
    if isinstance(item, TokenStep):
        return ["token", item.index + 1, round(elapsed_s, 3), f"{item.text!r} p={item.prob:.2f}"]
    if isinstance(item, StepFrame):
        return ["step", item.step, round(elapsed_s, 3), f"t={item.timestep:.0f} of {item.total_steps} steps"]
    return None
