"""Score the miniature model: render a fixed, seeded prompt set, read it back, check it.

    python -m wordsworlds evaluate              # both prompt sets, default sampling (20 steps)

    >>> report = evaluate(pipe, Recognizer.load(), num_prompts=20)        # doctest: +SKIP

Two sets: fresh scenes from the training distribution, and scenes that contain a
colour-kind pair held out of training (scene.HELD_OUT_PAIRS).
"""

from __future__ import annotations

import random
import time

import torch
from PIL import Image

from .checker import CATEGORIES, check
from .recognizer import Recognizer
from .scene import caption, parse_caption, random_scene

PROMPT_SETS = {"in_distribution": "exclude", "held_out": "only"}


def prompt_set(name: str, count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(f"eval-{name}-{seed}")
    return [caption(random_scene(rng, held_out=PROMPT_SETS[name]), rng) for _ in range(count)]


def score_prompts(pipe, recognizer: Recognizer, prompts: list[str], steps: int, guidance_scale: float, seed: int,
                  batch: int = 10) -> dict:
    totals = {c: [0, 0] for c in CATEGORIES}
    passed = 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generator = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator).images
        for prompt, seen in zip(chunk, recognizer.read(images)):
            result = check(parse_caption(prompt), seen)
            passed += result.passed
            for category, ok in result.checks.items():
                totals[category][0] += ok
                totals[category][1] += 1
    elapsed = time.perf_counter() - started
    categories = {c: round(ok / n, 4) for c, (ok, n) in totals.items() if n}
    return {
        "prompts": len(prompts),
        # Strict: every check of the prompt passes, i.e. the exact scene was drawn.
        "overall": passed / len(prompts),
        # GenEval's way: the mean of the per-category rates.
        "category_mean": round(sum(categories.values()) / len(categories), 4),
        "categories": categories,
        "seconds": round(elapsed, 2),
        "seconds_per_image": round(elapsed / len(prompts), 4),
    }


def evaluate(pipe, recognizer: Recognizer, num_prompts: int = 200, steps: int = 20, guidance_scale: float = 2.5,
             seed: int = 0) -> dict:
    """Score `pipe` (a Stable Diffusion pipeline of the storybook world) on both prompt sets."""
    report = {"steps": steps, "guidance_scale": guidance_scale, "scheduler": type(pipe.scheduler).__name__}
    for name in PROMPT_SETS:
        count = num_prompts if name == "in_distribution" else max(1, num_prompts // 2)
        report[name] = score_prompts(pipe, recognizer, prompt_set(name, count), steps, guidance_scale, seed)
    return report


def format_report(report: dict) -> str:
    lines = [f"steps={report['steps']} guidance={report['guidance_scale']} scheduler={report['scheduler']}",
             "overall = exact scene drawn (every check passes); category_mean = mean of the category rates (GenEval's way)"]
    header = f"{'category':<16}" + "".join(f"{name:>18}" for name in PROMPT_SETS)
    lines.append(header)
    for category in ("overall", "category_mean") + CATEGORIES:
        row = f"{category:<16}"
        for name in PROMPT_SETS:
            value = report[name].get(category, report[name]["categories"].get(category))
            row += f"{'-' if value is None else f'{value:.3f}':>18}"
        lines.append(row)
    for name in PROMPT_SETS:
        r = report[name]
        lines.append(f"{name}: {r['prompts']} prompts in {r['seconds']} s ({r['seconds_per_image']} s/image)")
    return "\n".join(lines)


@torch.no_grad()
def vae_round_trip(vae, recognizer: Recognizer, count: int = 500, seed: int = 7) -> dict:
    """How much of a scene survives the autoencoder: the recognizer's exact-scene rate on fresh
    drawings and on their round trips (encode, take the mean latent, decode), and the mean pixel error."""
    from .draw import draw_scene
    from .recognizer import images_to_tensor

    rng = random.Random(f"round-trip-{seed}")
    scenes = [random_scene(rng, held_out="any") for _ in range(count)]
    drawn, decoded, error = [], [], 0.0
    for start in range(0, count, 100):
        images = [draw_scene(s, rng=rng, jitter=1.0) for s in scenes[start:start + 100]]
        x = images_to_tensor(images)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        error += (y - x).abs().mean().item() * len(images) / count
        drawn += images
        decoded += [Image.fromarray(((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8")) for im in y]
    exact = lambda read: sum(a == b for a, b in zip(scenes, read)) / count  # noqa: E731
    return {"scenes": count, "exact_scene_drawn": exact(recognizer.read(drawn)),
            "exact_scene_round_trip": exact(recognizer.read(decoded)), "mean_abs_error": round(error, 4)}
