"""The LLM as scene planner: constrained decoding that can only write valid shapes-world plans.

The plan is written choice by choice, "a <size> <colour> <shape> <position>", then "and a ..."
or the end. At each choice the LLM scores every continuation the world's grammar allows
(each one's full token sequence, in one batched forward pass over a shared KV cache) and
only those can be chosen; the rest of the vocabulary is masked out. So even a 135M model
always writes a renderable plan, and every choice comes with the model's probability.

    >>> from wordsworlds.hybrid.planner import ScenePlanner
    >>> from wordsworlds.presets import get_preset
    >>> planner = ScenePlanner.load(get_preset("tiny"))
    >>> plan = planner.plan("a sunset over the sea")      # doctest: +SKIP
    >>> plan.caption                                       # doctest: +SKIP
    'a large orange circle at the top and a large blue square at the bottom'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..errors import check_text
from ..models import load_llm
from ..presets import Preset
from ..words.next_token import TextGenerator
from ..world.scene import (
    COLOURS, MAX_OBJECTS, POSITION_PHRASES, POSITIONS, SHAPE_WORDS, SHAPES, SIZE_WORDS, SIZES, Scene, WorldObject,
    parse_objects,
)

MAX_IDEA_CHARS = 500
AVOID_PENALTY = math.log(0.05)
FOLLOW_BONUS = math.log(100.0)
# Counting is what a 135M model copies worst: with a bonus of 100 it still ended 4 of 70
# three-object descriptions after two objects (hybrid/evaluate.py's set), so "and a" / "." follow
# the description far more strongly than the attributes do.
COUNT_BONUS = math.log(1e4)
MENTION_BONUS = math.log(5.0)

FEW_SHOT = """Draw each request as simple shapes. Shapes: circle, square, triangle. Colours: red, green, blue, yellow, purple, orange. Sizes: small, large. Places: on the left, on the right, at the top, at the bottom, in the center.

Request: a sunset over the sea
Picture: a large orange circle at the top and a large blue square at the bottom.
Request: a small green square on the right
Picture: a small green square on the right.
Request: a traffic light
Picture: a small red circle at the top and a small yellow circle in the center and a small green circle at the bottom.
Request: a big purple triangle in the middle and a tiny red disc on the left
Picture: a large purple triangle in the center and a small red circle on the left.
Request: a tree
Picture: a large green triangle in the center and a small orange square at the bottom.
Request: {idea}
Picture: a"""


@dataclass
class Choice:
    slot: str  # "size", "colour", "shape", "position" or "next"
    chosen: str
    probability: float  # the LLM's probability for it, renormalised over the allowed options
    options: dict[str, float]  # every allowed option -> probability


@dataclass
class Plan:
    scene: Scene
    choices: list[Choice] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.scene.objects)

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "scene": self.scene.to_dict(),
            "choices": [{"slot": c.slot, "chosen": c.chosen, "probability": round(c.probability, 4),
                         "options": {k: round(v, 4) for k, v in c.options.items()}} for c in self.choices],
        }


def validate_idea(idea) -> str:
    return check_text(idea, "the request", MAX_IDEA_CHARS)


@dataclass
class Grounding:
    """What the request itself says, as a bias on the LLM's choices.

    A 135M model copies poorly from its prompt, so options the request names get a bonus in
    log space: a request that is already a scene description is followed object by object
    (strongly); single world words elsewhere ("a red apple") get a mild nudge. The LLM's own
    probabilities are still what the trace shows.
    """

    objects: tuple | None  # the request's own objects, in its order, if it is a scene description
    mentioned: set

    @classmethod
    def of(cls, idea: str) -> "Grounding":
        words = set(re.findall(r"[a-z]+", idea.lower()))
        mentioned = {canon for canon, synonyms in {**SIZE_WORDS, **SHAPE_WORDS}.items() if words & set(synonyms)}
        mentioned |= words & set(COLOURS)
        mentioned |= {p for p, phrases in POSITION_PHRASES.items() if any(ph in idea.lower() for ph in phrases)}
        return cls(parse_objects(idea), mentioned)

    def bias(self, slot: str, value: str, index: int) -> float:
        if self.objects is not None:
            objects = self.objects
            if slot == "next":
                wanted = "and" if index < len(objects) else "."
                return COUNT_BONUS if value == wanted else 0.0
            if index < len(objects):
                return FOLLOW_BONUS if getattr(objects[index], slot) == value else 0.0
            return 0.0
        return MENTION_BONUS if value in self.mentioned else 0.0


class ScenePlanner:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @classmethod
    def load(cls, preset: Preset) -> "ScenePlanner":
        """A planner on the preset's LLM (loaded once per process, models.load_llm)."""
        llm = load_llm(preset)
        return cls(llm.model, llm.tokenizer)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def plan(self, idea: str, feedback: str = "", max_objects: int = MAX_OBJECTS, avoid: Scene | None = None,
             temperature: float = 0.0, seed: int | None = None) -> Plan:
        """Plan a scene for `idea`: greedy by default, sampled among the allowed options with a
        temperature. `feedback` (the checker's findings) and `avoid` (a plan that failed) steer a
        rewrite: the failed plan's exact objects are down-weighted."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        idea = validate_idea(idea).strip().replace("\n", " ")
        prompt = FEW_SHOT.format(idea=idea + (f" ({feedback})" if feedback else ""))
        prefix = torch.tensor([self._ids(prompt)], device=self.model.device)
        out = self.model(input_ids=prefix, use_cache=True)
        cache, last_logits = out.past_key_values, out.logits[0, -1]
        objects, choices = [], []
        grounding = Grounding.of(idea)
        avoided = {(o.size, o.colour, o.shape, o.position) for o in avoid.objects} if avoid else set()

        def choose(slot, options, extra_bias=None):
            nonlocal cache, last_logits
            texts = list(options)
            llm_scores, cache, last_logits, best_index = self._choose(
                cache, last_logits, texts,
                [grounding.bias(slot, options[t], len(objects)) + (extra_bias or {}).get(options[t], 0.0) for t in texts],
                temperature, generator,
            )
            total = torch.logsumexp(torch.tensor(llm_scores), 0).item()
            probs = {t.strip(): math.exp(score - total) for t, score in zip(texts, llm_scores)}
            best = texts[best_index]
            choices.append(Choice(slot, best.strip(), probs[best.strip()], probs))
            return options[best]

        while True:
            size = choose("size", {f" {s}": s for s in SIZES})
            colour = choose("colour", {f" {c}": c for c in COLOURS})
            shape = choose("shape", {f" {s}": s for s in SHAPES})
            free = [p for p in POSITIONS if p not in {o.position for o in objects}]
            # A rewrite steers away from repeating an object that failed, without forbidding it.
            avoid_bias = {p: AVOID_PENALTY for p in free if (size, colour, shape, p) in avoided}
            position = choose("position", {f" {POSITION_PHRASES[p][0]}": p for p in free}, avoid_bias)
            objects.append(WorldObject(position, shape, colour, size))
            more = "and" if len(objects) < max_objects else None
            if not more or choose("next", {" and a": "and", ".": "."}) == ".":
                break
        return Plan(Scene(tuple(objects)), choices)

    def _choose(self, cache, last_logits, texts, bias, temperature=0.0, generator=None):
        """Score each option's tokens after the cached prefix (the LLM's log-probabilities), pick
        one after adding `bias` (the best, or sampled with a temperature), and extend the cache with it."""
        token_lists = [self._ids(t) for t in texts]
        k, width = len(token_lists), max(len(t) for t in token_lists)
        pad = self.tokenizer.eos_token_id
        batch = torch.tensor([t + [pad] * (width - len(t)) for t in token_lists], device=self.model.device)
        length = cache.get_seq_length()
        first = last_logits.float().log_softmax(-1).cpu()
        cache.batch_repeat_interleave(k)
        # Right padding cannot change earlier positions of a causal model, so no mask is needed.
        logits = self.model(input_ids=batch, past_key_values=cache, use_cache=True).logits.float().log_softmax(-1).cpu()
        scores = []
        for i, tokens in enumerate(token_lists):
            score = first[tokens[0]].item()
            for j in range(1, len(tokens)):
                score += logits[i, j - 1, tokens[j]].item()
            scores.append(score)
        biased = torch.tensor([scores[i] + bias[i] for i in range(k)])
        if temperature > 0:
            best = int(torch.multinomial((biased / temperature).softmax(-1), 1, generator=generator))
        else:
            best = int(biased.argmax())
        cache.crop(-(cache.get_seq_length() - length))  # negative: how many tokens to drop
        cache.batch_select_indices(torch.tensor([best], device=self.model.device))
        out = self.model(input_ids=torch.tensor([token_lists[best]], device=self.model.device), past_key_values=cache,
                         use_cache=True)
        return scores, out.past_key_values, out.logits[0, -1], best


# ----------------------------------------------------------------------------- Hub presets


@dataclass
class PromptPlan:
    """With a full-size diffusion model the plan is free text: a richer prompt for the idea."""

    caption: str
    scene: None = None
    choices: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"caption": self.caption, "scene": None, "choices": []}


def sanitize_prompt(text: str, tokenizer, fallback: str) -> str:
    """LLM output is untrusted: one line of printable text, no labels or quotes, cut to what the
    diffusion text encoder reads (its token limit). Nothing in it is ever executed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    line = re.sub(r"^(image )?prompt\s*:\s*", "", line, flags=re.IGNORECASE)
    line = "".join(ch for ch in line if ch.isprintable()).strip(" \"'*`")
    line = re.sub(r"\s+", " ", line)
    limit = tokenizer.model_max_length - 2
    words = line.split(" ")
    while words and len(tokenizer.tokenize(" ".join(words))) > limit:
        words.pop()
    return " ".join(words) or fallback


def expand_idea(idea: str, tokenizer, generator: TextGenerator) -> PromptPlan:
    """Hub presets: the LLM writes a vivid one-sentence prompt for the idea, within the limit of
    the diffusion text encoder's `tokenizer`."""
    idea = validate_idea(idea)
    instruction = f"Write one vivid prompt for an image generator, a single sentence under 40 words, for: {idea}"
    text = generator.generate(instruction, max_new_tokens=64).text
    return PromptPlan(sanitize_prompt(text, tokenizer, fallback=idea))
