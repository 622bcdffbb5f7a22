"""Evaluate the hybrid loop over a fixed set of requests: direct render vs planned vs planned + refined.

    python -m wordsworlds evaluate --hybrid

The set: 50 everyday ideas, and direct scene descriptions drawn from the world with a fixed
seed. A description is checked against itself. An everyday idea is checked against its
*drawable part*, written here by hand for each idea: the things, sky and ground of the
request that the world has ("a cat on a boat": a cat and a boat; "an owl at night": a bird
and the night sky), with a colour or a number where the request says one. Some ideas name
things the world has no word for (a dragon, a cake); a pass then needs only what is drawable,
and every "cannot draw" the plan states must be true: not a word of the drawable part.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ..presets import Preset
from ..world.scene import Scene, WORLD_WORDS, caption, parse_caption, random_scene, sky_and_ground
from .loop import DEFAULT_GUIDANCE, HybridOptions, run_hybrid


@dataclass(frozen=True)
class DrawablePart:
    """What of an everyday idea the world can draw: things ("cat", "red:car", "2:bird"), a sky, a ground,
    and the request's words that name them (a plan must not say it cannot draw these)."""

    things: tuple[str, ...] = ()
    sky: str | None = None
    ground: str | None = None
    words: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: str, words: str) -> "DrawablePart":
        things, sky, ground = [], None, None
        for item in spec.split():
            if item.startswith("sky="):
                sky = item[4:]
            elif item.startswith("ground="):
                ground = item[7:]
            else:
                things.append(item)
        return cls(tuple(things), sky, ground, tuple(words.split()))

    def answered_by(self, seen: Scene | None) -> bool:
        """True when the read picture shows every part (other things may be there too)."""
        if seen is None:
            return False
        sky, ground = sky_and_ground(seen.background or "day")
        if (self.sky and sky != self.sky) or (self.ground and ground != self.ground):
            return False
        for thing in self.things:
            *attributes, kind = thing.split(":")
            count = next((int(a) for a in attributes if a.isdigit()), None)
            colour = next((a for a in attributes if not a.isdigit()), None)
            if not any(o.kind == kind and colour in (None, o.colour) and count in (None, o.count) for o in seen.objects):
                return False
        return True

    def false_claims(self, cannot_draw) -> list[str]:
        """The plan's "cannot draw" words that are in fact drawable (world words or the part's own words)."""
        return [w for w in cannot_draw if w in WORLD_WORDS or w in self.words]


EVERYDAY_IDEAS = [  # (idea, drawable part, the idea's words that name it)
    ("a sunset over the sea", "sky=sunset ground=sea", "sunset sea"),
    ("a snowman", "snowman", "snowman"),
    ("a cat on a boat", "cat boat", "cat boat"),
    ("a rocket in space", "rocket sky=space", "rocket space"),
    ("a puppy in the snow", "dog ground=snow", "puppy snow"),
    ("a ship on the ocean at night", "boat ground=sea sky=night", "ship ocean night"),
    ("a house in a meadow", "house ground=grass", "house meadow"),
    ("a red car", "red:car", "red car"),
    ("two birds in the sky", "2:bird", "two birds sky"),
    ("a full moon over the mountains", "moon mountain", "moon mountains"),
    ("a starry night", "star sky=night", "starry night"),
    ("a fish in the sea", "fish ground=sea", "fish sea"),
    ("a little girl with her dog", "person dog", "girl dog little"),
    ("a heart for my mum", "heart", "heart"),
    ("a tree in the snow", "tree ground=snow", "tree snow"),
    ("a garden with flowers", "flower", "garden flowers"),
    ("a dog chasing a cat", "dog cat", "dog cat"),
    ("a spaceship among the stars", "rocket star", "spaceship stars"),
    ("clouds over the mountain", "cloud mountain", "clouds mountain"),
    ("a yellow sun", "yellow:sun", "yellow sun"),
    ("a sailing boat at sunset", "boat sky=sunset", "sailing boat sunset"),
    ("a kitten playing in the grass", "cat ground=grass", "kitten grass"),
    ("a rocket launching at night", "rocket sky=night", "rocket night"),
    ("a cottage in the winter snow", "house ground=snow", "cottage winter snow"),
    ("a fish and a boat on the sea", "fish boat ground=sea", "fish boat sea"),
    ("three stars at night", "3:star sky=night", "three stars night"),
    ("a snowman under the moon", "snowman moon", "snowman moon"),
    ("a duck on a pond", "bird", "duck pond"),
    ("a volcano", "mountain", "volcano"),
    ("an astronaut in space", "sky=space", "space"),
    ("a red heart", "red:heart", "red heart"),
    ("a pirate ship", "boat", "ship"),
    ("a dragon flying over a house", "house", "house"),
    ("a birthday cake", "", ""),
    ("a police car at night", "car sky=night", "car night"),
    ("a lighthouse by the sea", "ground=sea", "sea"),
    ("a penguin on the snow", "ground=snow", "penguin snow"),
    ("an owl at night", "bird sky=night", "owl night"),
    ("a goldfish", "fish", "goldfish"),
    ("a purple flower", "purple:flower", "purple flower"),
    ("two cats", "2:cat", "two cats"),
    ("a christmas tree in the snow", "tree ground=snow", "tree snow"),
    ("a man walking his dog", "person dog", "man dog"),
    ("a green hill under a blue sky", "sky=day", "green hill blue sky"),
    ("a shooting star", "star", "star"),
    ("a white cloud", "white:cloud", "white cloud"),
    ("a bird on a tree", "bird tree", "bird tree"),
    ("the moon and the stars", "moon star", "moon stars"),
    ("a robot eating pizza", "", ""),
    ("a blue car on the grass", "blue:car ground=grass", "blue car grass"),
]


def hybrid_requests(direct: int = 70, seed: int = 4321) -> list[tuple[str, str, DrawablePart | None]]:
    """(kind, request, drawable part) triples: the everyday ideas, then `direct` seeded scene descriptions."""
    rng = random.Random(f"hybrid-{seed}")
    scenes = [caption(random_scene(rng), rng) for _ in range(direct)]
    return ([("everyday", idea, DrawablePart.of(spec, words)) for idea, spec, words in EVERYDAY_IDEAS]
            + [("direct", text, None) for text in scenes])


def evaluate_hybrid(preset: Preset, steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE, rounds: int = 3,
                    direct: int = 70) -> dict:
    """Pass rates of direct render, planned, and planned + refined over `hybrid_requests(direct)`."""
    rows = {"everyday": [], "direct": []}
    valid_plans = total_plans = 0
    claims, false_claims = 0, []
    for kind, request, part in hybrid_requests(direct):
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
        if part is None:  # a scene description: checked against itself, as the loop does
            passed = [direct_round.check.passed, loop[0].check.passed, loop[-1].check.passed]
        else:  # an everyday idea: checked against its drawable part
            passed = [part.answered_by(direct_round.seen), part.answered_by(loop[0].seen), part.answered_by(loop[-1].seen)]
            said = set(w for round_ in loop for w in round_.plan.cannot_draw)
            claims += len(said)
            false_claims += [f"{request}: {w}" for w in part.false_claims(sorted(said))]
        rows[kind].append({
            "direct": passed[0], "planned": passed[1], "refined": passed[2],
            "rounds": len(loop), "direct_s": direct_s, "loop_s": loop_s,
        })
    report = {"plan_validity": valid_plans / total_plans, "plans": total_plans, "steps": steps,
              "cannot_draw_claims": claims, "false_claims": false_claims,
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
             f"'cannot draw' statements: {report['cannot_draw_claims']}, false: {len(report['false_claims'])} "
             f"{report['false_claims'][:5] if report['false_claims'] else ''}",
             f"{'requests':<22}{'n':>5}{'direct':>9}{'planned':>9}{'+refined':>10}{'rounds':>8}{'s direct':>10}{'s loop':>8}"]
    for kind in ("direct", "everyday"):
        r = report[kind]
        lines.append(f"{kind:<22}{r['requests']:>5}{r['direct_render']:>9.3f}{r['planned']:>9.3f}"
                     f"{r['planned_refined']:>10.3f}{r['mean_rounds']:>8.2f}{r['direct_s_per_request']:>10.2f}"
                     f"{r['loop_s_per_request']:>8.2f}")
    return "\n".join(lines)
