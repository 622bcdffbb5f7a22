"""Worlds engine benchmark: per-image time for the miniature model at default settings.

    python benchmarks/bench_image.py [--repeats 5]

Baseline in the same run: a plain pipeline call, the way the talk's demo snippet does it
(`StableDiffusionPipeline.from_pretrained(...)`, then `pipe(prompt).images[0]`), at the same
steps and guidance. Then the engine with step streaming off and on (on = an x0 decode and a
latent preview at every step). Targets (2-core CPU): 64x64, 20 steps, guidance on, <= 0.5 s;
streaming overhead <= 20%.
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

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from wordsworlds.presets import SHAPES_WORLD, get_preset  # noqa: E402
from wordsworlds.worlds.diffusion import ImageGenerator  # noqa: E402

PROMPT = "a large red circle on the left and a small blue square on the right"


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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default=SHAPES_WORLD)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, guidance {args.guidance_scale}")

    plain = StableDiffusionPipeline.from_pretrained(args.weights)
    plain.set_progress_bar_config(disable=True)
    engine = ImageGenerator.load(get_preset("tiny", diffusion=args.weights))
    size = engine.native_size
    rows = [
        ("plain pipeline call (the talk's snippet)",
         timed(lambda: plain(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance_scale).images[0], args.repeats)),
        ("engine, streaming off",
         timed(lambda: engine.render(PROMPT, steps=args.steps, guidance_scale=args.guidance_scale, previews=False), args.repeats)),
        ("engine, streaming on (x_t + x0 preview every step)",
         timed(lambda: engine.render(PROMPT, steps=args.steps, guidance_scale=args.guidance_scale, previews=True), args.repeats)),
    ]
    base, off = rows[0][1], rows[1][1]
    print(f"\n{size}x{size} image, median of {args.repeats}")
    print(f"{'configuration':<52}{'s/image':>9}{'ms/step':>9}{'vs plain':>10}")
    for name, seconds in rows:
        print(f"{name:<52}{seconds:>9.3f}{seconds / args.steps * 1000:>9.1f}{seconds / base:>10.2f}")
    print(f"\nstreaming overhead (on vs off): {(rows[2][1] / off - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
