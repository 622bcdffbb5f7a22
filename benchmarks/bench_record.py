"""What keeping a run for replay costs: a render that records every step (x_t, x0 and the U-Net's
cross-attention maps, worlds/attention.py) against the same render unrecorded, in the same run.

    python benchmarks/bench_record.py [--repeats 7] [--room 16] [--threads 2]

Rows: one render alone (the diffusers pipeline call), and `--room` renders stepped together by the
batched loop (as the app serves a room). Speed is the median time per render; quality beside it:
the largest pixel difference between the recorded and unrecorded pictures (recording must change
nothing), plus the recording's size. A last row times one replay view (decoding x_t and x0 and
laying the overlays) from a kept two-by-two run. Target: recording costs at most 20%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.worlds.diffusion import ImageGenerator, decode_latents, validate_render_options  # noqa: E402

PROMPTS = ["a large red cat on the left and a small blue boat on the right, on the sea",
           "a big yellow sun at the top, at sunset", "two small white clouds in the middle and a large brown house below, on the grass"]


def engine(batching: bool) -> ImageGenerator:
    preset = get_preset("tiny")
    return ImageGenerator.load(replace(preset, accel=replace(preset.accel, batching=batching, engine_process=False)))


def render_all(generator: ImageGenerator, record: bool, count: int) -> tuple[float, list]:
    """`count` renders at once (threads; the batched loop steps them together): seconds per render, results."""
    results = [None] * count

    def one(i):
        options = validate_render_options(seed=i, record=record, previews=False)
        results[i] = generator.render(PROMPTS[i % len(PROMPTS)], options=options)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / count, results


def compare(generator: ImageGenerator, count: int, repeats: int) -> list:
    times = {False: [], True: []}
    render_all(generator, True, count)  # warm-up
    for _ in range(repeats):
        for record in (False, True):  # interleaved, so drift hits both alike
            seconds, results = render_all(generator, record, count)
            times[record].append(seconds)
            if record:
                recorded = results
            else:
                plain = results
    # Batched, a render's batch-mates vary from run to run (and with them a matrix product's summing order):
    # the pictures may differ by a grey level with or without recording, so the largest difference is reported.
    same = max(int(np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).max()) for a, b in zip(plain, recorded))
    trace = recorded[0].trace
    size = sum(a.nbytes for a in (*trace.noisy, *trace.x0, *trace.attention))
    base, rec = statistics.median(times[False]), statistics.median(times[True])
    return [base, rec, 100 * (rec / base - 1), same, size]


def replay_view_s(repeats: int) -> float:
    from wordsworlds.replay import Recording
    from wordsworlds.two_by_two import recording_of, run_two_by_two
    from wordsworlds.worlds.painter import Painter

    preset = get_preset("tiny")
    preset = replace(preset, accel=replace(preset.accel, engine_process=False))
    options = validate_render_options(record=True)
    finals = dict(run_two_by_two(preset, PROMPTS[0], options))
    recording: Recording = recording_of(PROMPTS[0], options, finals)
    vae = ImageGenerator.load(preset).pipe.vae
    canvases = Painter.load(preset).canvases
    times = []
    for step in range(1, repeats + 1):
        recording._pictures.clear()  # a step not seen before: every picture decoded
        started = time.perf_counter()
        recording.view_at(step, lambda latents: decode_latents(vae, latents), canvases, "red")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--room", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [["one render alone (pipeline call)", *compare(engine(False), 1, args.repeats)],
            [f"{args.room} renders batched", *compare(engine(True), args.room, max(2, args.repeats // 3))]]
    print(f"64x64, 20 steps DPM++, guidance 5, {args.threads} threads; median of the repeats\n")
    print("| run | plain s/render | recorded s/render | cost | largest pixel difference (0-255) | kept per render |")
    print("|---|---|---|---|---|---|")
    for name, base, rec, cost, same, size in rows:
        print(f"| {name} | {base:.3f} | {rec:.3f} | {cost:+.1f}% | {same} | {size / 1024:.0f} KB |")
    print(f"\none replay view (x_t and x0 decoded, the change and attention overlays, the painter's canvas): "
          f"{replay_view_s(args.repeats) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
