"""The two-by-two's four processes on one prompt set: quality, forward passes, time, first output.

    python benchmarks/bench_two_by_two.py [--prompts 100] [--threads 2]

Same prompts for every lane: world.evaluate's seeded sets (in distribution; and with a
colour-kind pair held out of all training). Words: validity (the caption parses back to a
scene) and fidelity (it is the scene asked for). Worlds: the checker's exact-scene rate
(every check passes) through the same recognizer, for the next-token painter and the
miniature Stable Diffusion at the preset's recipe (steps and guidance) and at
the painter's forward passes (32 steps with guidance: 64 U-Net evaluations against the
painter's 64 GPT-2 passes). Time to first visible output per lane, alone: the first word, the
first masked-diffusion pass, the painter's first row (its first canvas), the first x0 preview.
Every lane runs one request at a time, in this process.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from wordsworlds.models import load_describer  # noqa: E402
from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.words.captions import Captioner  # noqa: E402
from wordsworlds.world.checker import check  # noqa: E402
from wordsworlds.world.evaluate import prompt_set  # noqa: E402
from wordsworlds.world.scene import parse_caption  # noqa: E402
from wordsworlds.worlds.diffusion import ImageGenerator, StepFrame  # noqa: E402
from wordsworlds.worlds.painter import Painter  # noqa: E402

SETS = ("in_distribution", "held_out")


def words_rows(preset, prompts: dict) -> list[tuple]:
    rows = []
    for process in ("next_token", "masked_diffusion"):
        writer = Captioner.load(preset, process)
        writer.write(prompts["in_distribution"][0])  # warm-up
        for name, batch in prompts.items():
            valid = faithful = passes = 0
            seconds, first = [], []
            for prompt in batch:
                started = time.perf_counter()
                frame = None
                for frame in writer.stream(prompt):
                    if frame.step == 1:
                        first.append(time.perf_counter() - started)
                seconds.append(time.perf_counter() - started)
                scene = parse_caption(frame.caption)
                valid += scene is not None
                faithful += scene is not None and scene == parse_caption(prompt)
                passes += frame.step
            n = len(batch)
            rows.append((f"words {process}", name, n, f"validity {valid / n:.3f}, fidelity {faithful / n:.3f}",
                         passes / n, statistics.mean(seconds), statistics.median(first)))
    return rows


def worlds_rows(preset, prompts: dict, recognizer) -> list[tuple]:
    rows = []
    painter = Painter.load(preset)
    list(painter.stream(prompts["in_distribution"][0]))  # warm-up
    for name, batch in prompts.items():
        passed, seconds, first = 0, [], []
        for prompt in batch:
            started = time.perf_counter()
            frame = None
            for frame in painter.stream(prompt):
                if frame.picture is not None and len(first) < len(seconds) + 1:
                    first.append(time.perf_counter() - started)
            seconds.append(time.perf_counter() - started)
            passed += check(parse_caption(prompt), recognizer.read([frame.picture])[0]).passed
        n = len(batch)
        rows.append(("worlds next-token painter", name, n, f"exact scene {passed / n:.3f}", painter.length,
                     statistics.mean(seconds), statistics.median(first)))
    engine = ImageGenerator.load(preset)
    guidance = preset.recipe.guidance_scale
    for steps, label in ((preset.recipe.steps, "default"), (32, "matched passes")):
        engine.render(prompts["in_distribution"][0], steps=steps, guidance_scale=guidance)  # warm-up
        for name, batch in prompts.items():
            passed, seconds, first = 0, [], []
            for index, prompt in enumerate(batch):
                started = time.perf_counter()
                result = None
                for item in engine.stream(prompt, steps=steps, guidance_scale=guidance, seed=index):
                    if isinstance(item, StepFrame):
                        if item.step == 1:
                            first.append(time.perf_counter() - started)
                    else:
                        result = item
                seconds.append(time.perf_counter() - started)
                passed += check(parse_caption(prompt), recognizer.read([result.image])[0]).passed
            n = len(batch)
            rows.append((f"worlds denoising ({label}, {steps} steps)", name, n, f"exact scene {passed / n:.3f}",
                         result.stats.unet_evaluations, statistics.mean(seconds), statistics.median(first)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=100, help="in distribution; half as many held out")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("words", "worlds"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("tiny")
    preset = replace(preset, accel=replace(preset.accel, batching=False))  # each request alone
    prompts = {name: prompt_set(name, args.prompts if name == "in_distribution" else max(1, args.prompts // 2))
               for name in SETS}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; prompts: "
          + ", ".join(f"{k} {len(v)}" for k, v in prompts.items()))
    rows = []
    if args.only != "worlds":
        rows += words_rows(preset, prompts)
    if args.only != "words":
        rows += worlds_rows(preset, prompts, load_describer(preset).recognizer)
    header = ("lane", "set", "n", "quality", "forward passes", "s per output", "first visible (s, median)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for lane, name, n, quality, passes, seconds, first in rows:
        print(f"| {lane} | {name} | {n} | {quality} | {passes:.1f} | {seconds:.3f} | {first:.3f} |")


if __name__ == "__main__":
    main()
