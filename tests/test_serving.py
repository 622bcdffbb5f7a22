"""The room: batched engines give each request what it gets alone; the line and the refusal."""

import threading
import time

import numpy as np
import pytest
import torch

from conftest import TINY
from wordsworlds.serving import CAPACITY, InLine, Request, RoomFull, StepLoop

SCENES = ["a large red cat on the left", "a small blue boat on the right", "a big yellow sun at the top, at sunset",
          "two green cats", "a purple boat at the bottom"]


def run_together(fn, count: int) -> list:
    """fn(i) for i in range(count), from `count` threads released at the same moment."""
    results, gate = [None] * count, threading.Barrier(count)

    def one(i):
        gate.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_seeded_render_is_the_same_alone_in_the_pipeline_and_among_many_in_the_batch():
    from wordsworlds.models import load_diffusion
    from wordsworlds.worlds.diffusion import ImageGenerator

    pipe = load_diffusion(TINY).pipe
    batched, alone = ImageGenerator(pipe, batching=True), ImageGenerator(pipe, batching=False)
    # Each its own scheduler, steps, guidance (with and without) and seed.
    options = [dict(seed=1, steps=8), dict(seed=2, steps=6, scheduler="euler-ancestral"),
               dict(seed=3, steps=5, guidance_scale=1.0), dict(seed=4, steps=7, scheduler="ddim", guidance_scale=8),
               dict(seed=5, steps=4, scheduler="euler")]
    among = run_together(lambda i: batched.render(SCENES[i], **options[i]), len(SCENES))
    assert max(r.stats.batch_size for r in among) > 1  # they did share U-Net calls
    for i, result in enumerate(among):
        reference = alone.render(SCENES[i], **options[i])  # one diffusers pipeline call
        # A batched U-Net call sums its matrix products in another order than a call of one: the same
        # picture, to at most one grey level in a few of its 12,288 values. Measured among fifty at the
        # recipe (12 steps): in fp32, 28 of 50 identical, the others off by one level in at most 0.02% of
        # values; in bf16 (the storybook world's default on a CPU with native bfloat16, presets.py), all
        # within one level, in 1.5% of values on average, 2.5% at most.
        difference = np.abs(np.asarray(result.image, int) - np.asarray(reference.image, int))
        share = 0.04 if pipe.unet.dtype == torch.bfloat16 else 1e-3
        assert difference.max() <= 1 and (difference > 0).mean() < share, SCENES[i]
        assert result.stats.unet_evaluations == reference.stats.unet_evaluations
    solo = batched.render(SCENES[0], **options[0])
    assert np.abs(np.asarray(solo.image, int) - np.asarray(among[0].image, int)).max() <= 1


def test_a_seeded_text_is_the_same_alone_and_among_many_in_the_batch():
    from wordsworlds.models import load_llm
    from wordsworlds.words.next_token import TextGenerator

    llm = load_llm(TINY)
    batched, alone = TextGenerator(llm.model, llm.tokenizer, batching=True), TextGenerator(llm.model, llm.tokenizer)
    prompts = ["Name a colour.", "What is 2 plus 2?", "Say hello.", "List two fruits."]
    options = [dict(max_new_tokens=8), dict(max_new_tokens=5), dict(max_new_tokens=8, temperature=0.9, seed=3),
               dict(max_new_tokens=6, temperature=1.0, top_k=20, seed=9)]
    among = run_together(lambda i: batched.generate(prompts[i], **options[i]), len(prompts))
    assert max(r.stats.batch_size for r in among) > 1
    for i, result in enumerate(among):
        reference = alone.generate(prompts[i], **options[i])
        assert [s.token_id for s in result.steps] == [s.token_id for s in reference.steps], prompts[i]
        # Batched matrix products sum in another order: the probabilities agree to float precision.
        assert max(abs(a.prob - b.prob) for a, b in zip(result.steps, reference.steps)) < 1e-4
        assert result.text == reference.text and result.stats.stopped_by == reference.stats.stopped_by


def test_newcomers_waiting_for_their_prefill_get_their_first_token_before_anyone_gets_a_next_one(monkeypatch):
    """words/batching.py: a room's prompts are prefilled over several iterations when they exceed
    PREFILL_TOKENS, and those iterations end after the prefill, so the cores pass to the worlds loop and
    every newcomer's first token comes before a decoding row's next one."""
    from types import SimpleNamespace

    from wordsworlds.models import load_llm
    from wordsworlds.words import batching

    model = load_llm(TINY).model
    loop = batching.TokenLoop(model)  # its thread waits for submitted requests; this test steps it itself
    prompts = [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12]])]
    monkeypatch.setattr(batching, "PREFILL_TOKENS", 5)  # one prompt a pass

    def take(logits, batch_size):
        return SimpleNamespace(token_id=int(logits.argmax())), False

    requests = [Request(batching.TokenJob(ids, take)) for ids in prompts]
    for request in requests:
        loop.start(request)
    emitted = []
    for _ in range(4):
        loop.step(requests)
        emitted.append([request.out.qsize() for request in requests])
    # Prefills one by one with nobody decoding in between, then every row decoded at each step.
    assert emitted == [[1, 0, 0], [1, 1, 0], [2, 2, 2], [3, 3, 3]]


def test_a_stopped_request_leaves_the_batch_and_the_others_finish():
    from wordsworlds.models import load_llm
    from wordsworlds.words.next_token import GenerationStats, TextGenerator

    llm = load_llm(TINY)
    engine = TextGenerator(llm.model, llm.tokenizer, batching=True)
    stats = GenerationStats()
    stream = engine.stream("Tell a long story.", max_new_tokens=200, stats=stats)
    next(stream)
    stream.close()  # the reader leaves (Gradio's Stop, a closed phone)
    other = engine.generate("Say hello.", max_new_tokens=4)
    assert other.stats.new_tokens == 4
    deadline = time.time() + 10
    while engine.loop.load != (0, 0) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.loop.load == (0, 0)
    assert stats.new_tokens < 200


class _Counting(StepLoop):
    """A loop whose requests each take `job` steps of a few milliseconds."""

    def start(self, request: Request) -> None:
        request.state = request.job

    def step(self, active):
        time.sleep(0.01)
        ended = []
        for request in active:
            request.state -= 1
            request.emit(request.state)
            if request.state == 0:
                request.finish()
                ended.append(request)
        return ended


def test_past_capacity_a_request_is_refused_at_once_and_those_in_line_hear_their_place():
    loop = _Counting("test", max_batch=2, capacity=4)
    streams = [loop.stream(30, line_updates=True) for _ in range(4)]
    firsts = [next(s) for s in streams]  # each request is submitted when its stream starts
    started = time.perf_counter()
    with pytest.raises(RoomFull, match="room is full"):
        next(loop.stream(30))
    assert time.perf_counter() - started < 1
    waiting = [f for f in firsts if isinstance(f, InLine)]
    assert waiting and all(w.position >= 1 and "in line" in w.message() for w in waiting)
    for stream in streams:
        assert [i for i in stream if not isinstance(i, InLine)][-1] == 0  # everyone admitted finishes
    assert loop.largest_batch == 2


def test_a_loop_in_turns_steps_its_batch_a_part_at_a_time_and_lets_the_other_loop_in_between():
    from wordsworlds.serving import FairLock

    cores, log = FairLock(), []

    class Logged(_Counting):
        def step(self, active):
            log.append((self.name, len(active)))
            return super().step(active)

    worlds = Logged("worlds", max_batch=8, capacity=8, cores=cores, turn_batch=2)
    words = Logged("words", max_batch=8, capacity=8, cores=cores)
    with cores:  # hold the cores until all six are submitted, so the five renders share a batch
        runs = [worlds.stream(3) for _ in range(5)] + [words.stream(3)]
        started = [threading.Thread(target=lambda r=r: results.append(list(r)[-1])) for r in runs]
        results = []
        for thread in started:
            thread.start()
        time.sleep(0.2)
    for thread in started:
        thread.join(10)
    assert results == [0] * 6  # every request still takes its three steps
    worlds_turns = [n for name, n in log if name == "worlds"]
    assert max(worlds_turns) == 2 and sum(worlds_turns) == 15  # 5 renders x 3 steps, at most 2 a turn
    first_words = next(i for i, (name, _) in enumerate(log) if name == "words")
    assert first_words < len(log) - 1 and any(name == "worlds" for name, _ in log[first_words + 1:])  # interleaved


def test_the_cores_go_first_come_first_served_except_to_one_asking_ahead():
    from wordsworlds.serving import FairLock

    cores, order = FairLock(), []

    def take(name, ahead):
        cores.acquire(ahead=ahead)
        order.append(name)
        cores.release()

    cores.acquire()
    waiting = []
    for name, ahead in (("first", False), ("second", False), ("ahead", True)):
        waiting.append(threading.Thread(target=take, args=(name, ahead)))
        waiting[-1].start()
        time.sleep(0.1)  # in line in this order
    cores.release()
    for thread in waiting:
        thread.join(10)
    assert order == ["ahead", "first", "second"]


def test_a_loops_newcomers_go_ahead_of_the_other_loops_waiting_turn_when_it_says_so():
    from wordsworlds.serving import FairLock

    cores, log = FairLock(), []

    class Logged(_Counting):
        def step(self, active):
            log.append(self.name)
            return super().step(active)

    for newcomers_ahead, first in ((True, "worlds"), (False, "words")):
        log.clear()
        words = Logged("words", cores=cores)
        worlds = Logged("worlds", cores=cores, turn_batch=2, newcomers_ahead=newcomers_ahead)
        results = []
        with cores:  # the words loop gets in line first, then the worlds loop with its newcomers
            threads = [threading.Thread(target=lambda: results.append(list(words.stream(1))))]
            threads[0].start()
            time.sleep(0.2)
            threads.append(threading.Thread(target=lambda: results.append(list(worlds.stream(1)))))
            threads[1].start()
            time.sleep(0.2)
        for thread in threads:
            thread.join(10)
        assert len(results) == 2 and log[0] == first


def test_a_full_room_gets_fewer_fuller_updates_and_a_lone_visitor_every_one():
    from types import SimpleNamespace

    from wordsworlds.ui.common import Pace

    def engine(running):
        return SimpleNamespace(running=running)

    alone = Pace(engine(1), engine(0))
    assert alone.due()
    time.sleep(Pace.PACE_S * 1.5)  # a lone visitor's steps come slower than this: each one is sent
    assert alone.due()
    busy = Pace(engine(50))
    assert busy.due() and not busy.due()  # the first at once, the next after PACE_S x 50 seconds
    unbatched = Pace(engine(0))
    assert all(unbatched.due() for _ in range(5))


# ----------------------------------------------------------------------------- the engine process


@pytest.fixture(scope="module")
def engines():
    """The offline preset's engine process, as the app starts it (engines.py)."""
    from wordsworlds.engines import engine_process

    process = engine_process(TINY)
    process.wait_ready()
    return process


def test_the_engine_process_streams_what_the_engines_give_in_this_process(engines):
    from wordsworlds.models import load_diffusion, load_llm
    from wordsworlds.serving import InLine
    from wordsworlds.words.next_token import GenerationStats, TextGenerator, validate_options
    from wordsworlds.worlds.diffusion import ImageGenerator, RenderResult, StepFrame, validate_render_options

    llm = load_llm(TINY)
    options = validate_options(max_new_tokens=6, temperature=0.8, seed=5)
    stats = GenerationStats()
    remote = [s for s in engines.words.stream("Say hello.", options, stats=stats, line_updates=True)
              if not isinstance(s, InLine)]
    reference = TextGenerator(llm.model, llm.tokenizer).generate("Say hello.", max_new_tokens=6, temperature=0.8,
                                                                  seed=5)
    assert [s.token_id for s in remote] == [s.token_id for s in reference.steps]
    assert max(abs(a.prob - b.prob) for a, b in zip(remote, reference.steps)) < 1e-4
    assert (stats.new_tokens, stats.stopped_by) == (6, "max_new_tokens")  # the caller's stats, filled in

    render = validate_render_options(steps=5, seed=2, scheduler="ddim")
    items = list(engines.worlds.stream(SCENES[2], render))
    assert [type(i) for i in items] == [StepFrame] * 5 + [RenderResult]
    alone = ImageGenerator(load_diffusion(TINY).pipe).render(SCENES[2], steps=5, seed=2, scheduler="ddim")
    assert np.abs(np.asarray(items[-1].image, int) - np.asarray(alone.image, int)).max() <= 1


def test_the_engine_process_says_what_went_wrong_and_stops_what_is_left(engines):
    from wordsworlds.errors import InputError
    from wordsworlds.words.next_token import validate_options
    from wordsworlds.worlds.diffusion import RenderResult, validate_render_options

    with pytest.raises(InputError, match="prompt"):  # raised in the engine process, re-raised here
        list(engines.words.stream("", validate_options()))
    flags = {"stop": False}
    items = []
    for item in engines.worlds.stream(SCENES[0], validate_render_options(steps=60), should_stop=lambda: flags["stop"]):
        items.append(item)
        flags["stop"] = True  # Stop pressed after the first frame: the render ends at its next step
    assert isinstance(items[-1], RenderResult) and items[-1].stats.stopped_by == "cancelled"
    assert len(items) < 10
    left = engines.words.stream("Tell a long story.", validate_options(max_new_tokens=200))
    next(left)
    left.close()  # the reader leaves: the request is cancelled there, and the engines serve the next
    assert len(list(engines.words.stream("Say hello.", validate_options(max_new_tokens=3)))) == 3


def test_a_stopped_engine_process_fails_its_requests_with_a_message_and_the_next_run_starts_another():
    from wordsworlds.engines import EngineProcess
    from wordsworlds.errors import ModelUnavailable
    from wordsworlds.words.next_token import validate_options

    process = EngineProcess(TINY)
    process.wait_ready()
    stream = process.words.stream("Tell a long story.", validate_options(max_new_tokens=200))
    next(stream)
    process._process.kill()  # a crash (out of memory, a killed process)
    with pytest.raises(ModelUnavailable, match="engine process stopped"):
        list(stream)
    assert not process.alive  # engine_process() makes a new one for the next run


def test_past_capacity_the_web_process_refuses_at_once_without_asking_the_engine_process():
    from wordsworlds.engines import RemoteEngine

    class OneStepProcess:  # stands in for EngineProcess: one item per request, then the end
        asked = 0

        def stream(self, side, arguments, skip_stale, should_stop):
            self.asked += 1
            yield "first", None
            yield None, None

    process = OneStepProcess()
    engine = RemoteEngine(process, "worlds", capacity=1)
    going = engine.stream("a red cat", None)
    assert next(going) == "first" and engine.running == 1
    started = time.perf_counter()
    with pytest.raises(RoomFull, match="room is full: 1 worlds runs"):
        next(engine.stream("a blue boat", None))
    assert time.perf_counter() - started < 0.1 and process.asked == 1
    assert list(going) == [] and engine.running == 0  # the first run ends: its place is free again
    assert list(engine.stream("a blue boat", None)) == ["first"]


def test_an_engine_process_that_cannot_load_its_models_says_why_to_every_run_without_starting_again():
    from wordsworlds.engines import EngineProcess
    from wordsworlds.errors import ModelUnavailable
    from wordsworlds.presets import get_preset

    process = EngineProcess(get_preset("tiny", llm="/nonexistent/llm-folder"))
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="nonexistent"):
            process.wait_ready()
    assert process.alive  # engine_process() keeps it: a missing model is said at once, not reloaded per run


def test_a_batched_render_without_previews_decodes_only_its_final_picture():
    from wordsworlds.models import load_diffusion
    from wordsworlds.worlds.diffusion import ImageGenerator, RenderResult

    engine = ImageGenerator(load_diffusion(TINY).pipe, batching=True)
    *frames, result = engine.stream(SCENES[1], steps=4, seed=7, previews=False)
    assert isinstance(result, RenderResult) and len(frames) == 4
    assert all(f.x0 is None and not f.x0_decoded for f in frames)
    with_previews = engine.render(SCENES[1], steps=4, seed=7)
    assert np.array_equal(np.asarray(result.image), np.asarray(with_previews.image))


def test_the_web_app_runs_every_admitted_request_and_keeps_a_bounded_number_of_sessions():
    """Gradio's defaults would run 40 jobs at once and keep 10,000 visitors' sessions (each walked by every
    full garbage collection): the mounted app sets both for a room (ui/serve.py)."""
    from wordsworlds.ui import build_demo
    from wordsworlds.ui.serve import MAX_THREADS, SESSIONS_KEPT, create_app

    demo = build_demo(TINY)
    app = create_app(demo)
    mounted = [route.app for route in app.routes if hasattr(getattr(route, "app", None), "state_holder")]
    assert mounted and mounted[0].state_holder.capacity == SESSIONS_KEPT < 10_000
    assert demo.max_threads == MAX_THREADS >= 2 * CAPACITY


def test_a_visitors_session_copies_a_components_settings_only_when_it_changes_them():
    """Gradio's session copies every block's settings at once (about 1,200 objects a visitor, walked by every
    full garbage collection); the app's copies lazily (ui/sessions.py), and a deep link still lists what
    Gradio's would."""
    import gradio as gr
    from gradio.state_holder import SessionState

    from wordsworlds.ui import build_demo, sessions

    demo = build_demo(TINY)
    eager = SessionState.__new__(SessionState)
    sessions._GRADIO_INIT(eager, demo)
    sessions.use_light_sessions()
    light = SessionState(demo)
    # Every attribute Gradio's own __init__ sets (a Gradio upgrade that adds one fails here).
    assert vars(light).keys() - {"_copied_from"} == vars(eager).keys()
    assert light.config_values == {} and len(eager.config_values) == len(demo.blocks)
    assert list(light.components) == list(eager.components)  # what /gradio_api/deep_link stores

    box = next(block for block in demo.blocks.values() if isinstance(block, gr.Textbox))
    changed = SessionState(demo)
    changed._update_value_in_config(box._id, "a red fox")  # what Gradio does when a handler updates the box
    assert list(changed.config_values) == [box._id]
    assert changed.config_values[box._id]["props"]["value"] == "a red fox"
