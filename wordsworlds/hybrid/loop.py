"""The hybrid loop: the LLM plans, diffusion renders, the describer reads back, the checker
scores, and on a miss the next round changes what failed, for at most N rounds.

In the storybook world a plan is also a layout: a refining round keeps the objects that came
out right and redraws only the ones that failed, each in its own region (layout.py).

    >>> from wordsworlds.hybrid.loop import run_hybrid
    >>> for round_ in run_hybrid(preset, "a sunset over the sea", rounds=3):    # doctest: +SKIP
    ...     print(round_.index, round_.prompt, round_.check.score)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from PIL import Image

from ..errors import check_number
from ..models import load_sentence_encoder
from ..presets import STORYBOOK_RECIPE, Preset
from ..words.next_token import TextGenerator
from ..world.checker import CheckResult, check
from ..world.scene import Scene, outside_words, parse_caption
from ..worlds.diffusion import ImageGenerator, validate_render_options
from ..worlds.layout import render_layout, repaint_mask
from .describe import describe
from .planner import Plan, PromptPlan, ScenePlanner, expand_idea, validate_idea

MAX_ROUNDS = 5
MAX_TOTAL_SECONDS = 180.0
DEFAULT_GUIDANCE = STORYBOOK_RECIPE.guidance_scale


@dataclass
class HybridOptions:
    rounds: int = 3
    plan: bool = True
    refine: bool = True
    steps: int = 20
    guidance_scale: float = DEFAULT_GUIDANCE
    seed: int = 0
    max_seconds: float = MAX_TOTAL_SECONDS


def validate_hybrid_options(rounds=3, plan=True, refine=True, steps=20, guidance_scale=DEFAULT_GUIDANCE, seed=0,
                            max_seconds=MAX_TOTAL_SECONDS) -> HybridOptions:
    """Every option checked before any model work; steps, guidance and seed with the same bounds
    as a render (worlds.diffusion.validate_render_options). Out of range is refused, never clamped."""
    rounds = check_number("rounds", rounds, int, 1, MAX_ROUNDS)
    render = validate_render_options(steps=steps, guidance_scale=guidance_scale, seed=seed)
    max_seconds = check_number("max_seconds", max_seconds, float, 1, MAX_TOTAL_SECONDS)
    return HybridOptions(rounds, bool(plan), bool(refine), render.steps, render.guidance_scale, render.seed,
                         max_seconds)


@dataclass
class Round:
    index: int  # 1-based
    action: str  # what this round changed, in words
    prompt: str  # what the diffusion model was given
    plan: Plan | PromptPlan | None
    target: Scene | None  # what the checker compares against
    seed: int
    guidance_scale: float
    image: Image.Image
    seen: Scene | None
    description: str
    check: CheckResult
    seconds: float
    relation: PlanRelation  # what the check is against, and how the rendered prompt relates to the request

    def to_dict(self) -> dict:
        return {
            "round": self.index, "action": self.action, "prompt": self.prompt, "seed": self.seed,
            "guidance_scale": self.guidance_scale, "plan": self.plan.to_dict() if self.plan else None,
            "description": self.description, "check": self.check.to_dict(), "seconds": round(self.seconds, 3),
            "relation": asdict(self.relation),
        }


@dataclass(frozen=True)
class PlanRelation:
    """A pass means the picture matches `checked_against`; this says, separately and plainly, how
    what was rendered relates to the person's request, so a plan unrelated to the request never
    shows as a bare pass."""

    checked_against: str  # "request" (it is a scene: checked as asked), "plan", or "" (nothing to check)
    similarity: float | None  # the meaning encoder's cosine of request and rendered prompt (None: the same text)
    not_drawable: tuple[str, ...]  # words of the request the world has nothing for
    drawn_as: tuple[str, ...] = ()  # "ocean as sea (ground)": request words drawn as the nearest world value
    notes: tuple[str, ...] = ()  # what of the request the plan clamped to the world

    def summary(self) -> str:
        if self.checked_against == "request":
            return "checked against your request itself"
        parts = ["checked against the plan, not your request"] if self.checked_against == "plan" else []
        if self.similarity is not None:
            parts.append(f"the plan is {self.similarity:.2f} similar in meaning to your request (1 = the same)")
        if self.drawn_as:
            parts.append(f"drawn as the nearest the world has: {', '.join(self.drawn_as)}")
        if self.not_drawable:
            parts.append(f"this world cannot draw: {', '.join(self.not_drawable)}")
        parts += self.notes
        return "; ".join(parts)


def relate(preset: Preset, idea: str, prompt: str, checked_against: str, plan=None) -> PlanRelation:
    similarity = None
    if prompt != idea:
        vectors = load_sentence_encoder(preset).model.encode([idea, prompt], normalize_embeddings=True)
        similarity = round(float(vectors[0] @ vectors[1]), 4)
    not_drawable = ()
    if preset.storybook_world and checked_against != "request":
        not_drawable = plan.cannot_draw if isinstance(plan, Plan) else tuple(outside_words(idea))
    drawn_as = tuple(f"{word} as {value}" for word, value in plan.drawn_as.items()) if isinstance(plan, Plan) else ()
    notes = plan.notes if isinstance(plan, Plan) else ()
    return PlanRelation(checked_against, similarity, not_drawable, drawn_as, notes)


def unchecked(reason: str) -> CheckResult:
    return CheckResult(checks={}, findings=[reason])


SEMANTIC_PASS = 0.5


def semantic_check(preset: Preset, wanted: str, description: str) -> CheckResult:
    """Hub presets read no scene: compare the meaning of the describer's caption with the
    prompt (MiniLM cosine similarity) instead of checking objects one by one."""
    vectors = load_sentence_encoder(preset).model.encode([wanted, description], normalize_embeddings=True)
    similarity = float(vectors[0] @ vectors[1])
    return CheckResult(checks={"meaning": similarity >= SEMANTIC_PASS},
                       findings=[f"the description is {similarity:.2f} similar in meaning to the prompt "
                                 f"(pass: {SEMANTIC_PASS})"])


def run_hybrid(preset: Preset, idea: str, options: HybridOptions | None = None, checker=check,
               **option_kwargs) -> Iterator[Round]:
    """Yield each round as it finishes; stop at the first full pass, the round cap or the time cap.

    `checker(target, seen) -> CheckResult` can be swapped (tests plant failures with it).
    """
    idea = validate_idea(idea)
    options = options or validate_hybrid_options(**option_kwargs)
    engine = ImageGenerator.load(preset)
    storybook_world = preset.storybook_world
    requested = parse_caption(idea) if storybook_world else None  # a scene description is checked against itself
    plan = None
    if options.plan and storybook_world:
        planner = ScenePlanner.load(preset)
        plan = planner.plan(idea)
    elif options.plan:
        plan = expand_idea(idea, engine.pipe.tokenizer, TextGenerator.load(preset))
    seed, guidance = options.seed, options.guidance_scale
    layout = storybook_world and plan is not None  # a storybook-world plan is a layout the refine can use
    action = "plan, then render" if plan else "render the request as written"
    keep = None  # (latents, mask): what a refining round keeps from the round before
    started = time.perf_counter()
    for index in range(1, options.rounds + 1):
        round_started = time.perf_counter()
        prompt = plan.caption if plan else idea
        target = requested or (plan.scene if plan else None)
        # The first round renders the caption as a whole: on hybrid/evaluate.py's 70 descriptions that
        # passed 0.957 (guidance 5), region by region at best 0.81 (guidance 2; a phrase alone
        # loses its context). A redraw goes region by region, around what is kept.
        if layout:
            result = render_layout(engine.pipe, plan.scene, options.steps, guidance, seed, keep=keep,
                                   regional=keep is not None)
        else:
            result = engine.render(prompt, steps=options.steps, guidance_scale=guidance, seed=seed)
        seen, description = describe(preset, result.image)
        if not storybook_world:
            verdict = semantic_check(preset, prompt, description)
        elif target:
            verdict = checker(target, seen)
        else:
            verdict = unchecked("the request names no storybook-world scene to check")
        if requested is not None or (not storybook_world and prompt == idea):
            against = "request"
        else:
            against = "plan" if (target is not None or not storybook_world) else ""
        yield Round(index, action, prompt, plan, target, seed, guidance, result.image, seen, description, verdict,
                    time.perf_counter() - round_started, relate(preset, idea, prompt, against, plan))
        if verdict.passed or not options.refine or (storybook_world and target is None):
            return
        if time.perf_counter() - started > options.max_seconds:
            return
        # What changes next: the noise, and what is redrawn; for an everyday idea whose plan
        # keeps failing, the plan itself.
        seed = (seed + 7919) % 2**32
        findings = "; ".join(verdict.findings[:2])
        if storybook_world and plan is not None and requested is None and index >= 2:
            plan = planner.plan(idea, feedback="; ".join(verdict.findings[:3]), avoid=plan.scene,
                                temperature=0.8, seed=seed)
            keep = None
            action = "the LLM rewrote the plan given the checker's findings: " + findings
        elif layout:
            mask = repaint_mask(result.masks, plan.scene, seen)
            if mask.min() < 1:
                keep = (result.latents, mask)
                kept = [o for o in plan.scene.objects if seen is not None and o in seen.objects]
                action = (f"kept {len(kept)} of {len(plan.scene.objects)} objects; redrew the rest, each in its "
                          f"own region, from new noise, after: " + findings)
            else:  # every planned object was read, yet the check missed: nothing to single out
                keep = None
                action = "redrew everything from new noise after: " + findings
        else:
            action = "new seed after: " + findings
