"""Worlds engine benchmark: per-image time for the miniature model at default settings.

    python benchmarks/bench_image.py [--repeats 5]

Baseline in the same run: a plain pipeline call, the way the talk's demo snippet does it
(`StableDiffusionPipeline.from_pretrained(...)`, then `pipe(prompt).images[0]`), at the same
steps and guidance (the storybook recipe's by default). Then the engine in fp32 and in its default
precision (bf16 for the storybook world on a CPU with native bfloat16: presets.Recipe.cpu_bf16), with
step streaming off and on (on = an x0 decode and a latent preview at every step). Quality beside each
speed: the same seed's picture against the plain call's. Targets (2-core CPU): 64x64, guidance on,
<= 1.5x the shapes world's 0.33 s; streaming overhead <= 20%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from wordsworlds.accel import Accel  # noqa: E402
from wordsworlds.presets import STORYBOOK_RECIPE, STORYBOOK_WORLD, get_preset  # noqa: E402
from wordsworlds.serving import tune_garbage_collector  # noqa: E402
from wordsworlds.worlds.diffusion import ImageGenerator  # noqa: E402

PROMPT = "a large red cat on the left and a small blue boat on the right, on the sea"
SEED = 0


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=STORYBOOK_RECIPE.steps)
    parser.add_argument("--guidance-scale", type=float, default=STORYBOOK_RECIPE.guidance_scale)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default=STORYBOOK_WORLD)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, guidance {args.guidance_scale}")

    plain = StableDiffusionPipeline.from_pretrained(args.weights)
    plain.set_progress_bar_config(disable=True)
    engine = ImageGenerator.load(get_preset("tiny", diffusion=args.weights))
    fp32 = ImageGenerator.load(get_preset("tiny", diffusion=args.weights, accel=Accel(precision="fp32")))
    size = engine.native_size
    tune_garbage_collector()  # as the app's engine process does once its models are loaded (serving.py)

    def plain_call():
        return plain(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                     generator=torch.Generator().manual_seed(SEED)).images[0]

    def engine_call(generator, previews):
        return lambda: generator.render(PROMPT, steps=args.steps, guidance_scale=args.guidance_scale, seed=SEED,
                                        previews=previews).image

    calls = [("plain pipeline call, fp32 (the talk's snippet)", plain_call),
             (f"engine, {fp32.report.dtype}, streaming off", engine_call(fp32, False)),
             (f"engine, {engine.report.dtype.split()[0]} (the default here), streaming off", engine_call(engine, False)),
             (f"engine, {engine.report.dtype.split()[0]}, streaming on (x_t + x0 preview every step)",
              engine_call(engine, True))]
    reference = np.asarray(plain_call(), int)
    rows = []
    for name, call in calls:
        difference = np.abs(np.asarray(call(), int) - reference)  # quality: the same seed's picture against plain
        rows.append((name, timed(call, args.repeats), int(difference.max()), float((difference > 0).mean())))
    base, off = rows[0][1], rows[2][1]
    print(f"\n{size}x{size} image, median of {args.repeats}; quality: the same seed's picture against the plain "
          "call's (largest difference in grey levels, share of values that differ); exact scenes: "
          "python -m wordsworlds evaluate")
    print(f"{'configuration':<66}{'s/image':>9}{'ms/step':>9}{'vs plain':>10}{'max diff':>10}{'differ':>8}")
    for name, seconds, most, share in rows:
        print(f"{name:<66}{seconds:>9.3f}{seconds / args.steps * 1000:>9.1f}{seconds / base:>10.2f}{most:>10d}"
              f"{share:>8.1%}")
    print(f"\nstreaming overhead (on vs off): {(rows[3][1] / off - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
