"""Evaluate the hybrid loop over a fixed set of requests: direct render vs planned vs planned + refined.

    python -m wordsworlds evaluate --hybrid

The set: everyday ideas (which only a plan can turn into shapes) and direct scene
descriptions drawn from the world with a fixed seed. Direct render is checked against the
request where the request is a scene; an everyday idea rendered directly has nothing to be
checked against and counts as a miss.
"""

from __future__ import annotations

import random
import time

from ..presets import Preset
from ..world.scene import caption, parse_caption, random_scene
from .loop import DEFAULT_GUIDANCE, HybridOptions, run_hybrid

EVERYDAY_IDEAS = [
    "a sunset over the sea", "a traffic light", "two suns", "a snowman", "a tree", "a house", "a ball on the grass",
    "a night sky with the moon", "the flag of Japan", "an orange on a table", "three balloons",
    "a pyramid in the desert", "a stop sign", "a blueberry", "a slice of pizza", "a lemon", "a sailing boat",
    "a mountain at dawn", "a strawberry", "an egg in a pan", "a tomato", "a grape", "a dice", "a candle",
    "a lighthouse", "a frog on a leaf", "a fire", "a planet", "a present box", "a cherry",
]


def hybrid_requests(direct: int = 70, seed: int = 4321) -> list[tuple[str, str]]:
    """(kind, request) pairs: the everyday ideas, then `direct` seeded scene descriptions."""
    rng = random.Random(f"hybrid-{seed}")
    scenes = [caption(random_scene(rng), rng) for _ in range(direct)]
    return [("everyday", idea) for idea in EVERYDAY_IDEAS] + [("direct", text) for text in scenes]


def evaluate_hybrid(preset: Preset, steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE, rounds: int = 3,
                    direct: int = 70) -> dict:
    """Pass rates of direct render, planned, and planned + refined over `hybrid_requests(direct)`."""
    rows = {"everyday": [], "direct": []}
    valid_plans = total_plans = 0
    for kind, request in hybrid_requests(direct):
        started = time.perf_counter()
        direct_round = next(run_hybrid(preset, request, HybridOptions(rounds=1, plan=False, refine=False, steps=steps,
                                                                      guidance_scale=guidance_scale)))
        direct_s = time.perf_counter() - started
        started = time.perf_counter()
        loop = list(run_hybrid(preset, request, HybridOptions(rounds=rounds, plan=True, refine=True, steps=steps,
                                                              guidance_scale=guidance_scale)))
        loop_s = time.perf_counter() - started
        for round_ in loop:
            total_plans += 1
            valid_plans += parse_caption(round_.plan.caption) == round_.plan.scene
        rows[kind].append({
            "direct": direct_round.check.passed, "planned": loop[0].check.passed, "refined": loop[-1].check.passed,
            "rounds": len(loop), "direct_s": direct_s, "loop_s": loop_s,
        })
    report = {"plan_validity": valid_plans / total_plans, "plans": total_plans, "steps": steps,
              "guidance_scale": guidance_scale, "max_rounds": rounds}
    for kind, items in rows.items():
        n = len(items)
        report[kind] = {
            "requests": n,
            "direct_render": sum(r["direct"] for r in items) / n,
            "planned": sum(r["planned"] for r in items) / n,
            "planned_refined": sum(r["refined"] for r in items) / n,
            "mean_rounds": sum(r["rounds"] for r in items) / n,
            "direct_s_per_request": sum(r["direct_s"] for r in items) / n,
            "loop_s_per_request": sum(r["loop_s"] for r in items) / n,
        }
    return report


def format_hybrid_report(report: dict) -> str:
    lines = [f"plan validity {report['plan_validity']:.3f} over {report['plans']} plans; "
             f"{report['steps']} steps, guidance {report['guidance_scale']}, up to {report['max_rounds']} rounds",
             f"{'requests':<22}{'n':>5}{'direct':>9}{'planned':>9}{'+refined':>10}{'rounds':>8}{'s direct':>10}{'s loop':>8}"]
    for kind in ("direct", "everyday"):
        r = report[kind]
        lines.append(f"{kind:<22}{r['requests']:>5}{r['direct_render']:>9.3f}{r['planned']:>9.3f}"
                     f"{r['planned_refined']:>10.3f}{r['mean_rounds']:>8.2f}{r['direct_s_per_request']:>10.2f}"
                     f"{r['loop_s_per_request']:>8.2f}")
    return "\n".join(lines)
