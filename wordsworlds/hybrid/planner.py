"""The LLM as scene planner: constrained decoding that can only write valid storybook-world plans.

The plan is written choice by choice: the sky, the ground, then each object ("a <size>
<colour> <kind> <place>", or "two ..."), then "and" or the end. At each choice the LLM scores
every continuation the world's grammar allows (each one's full token sequence, in one batched
forward pass over a shared KV cache) and only those can be chosen; the rest of the vocabulary
is masked out. So even a 135M model always writes a drawable plan, and every choice comes with
the model's probability.

The request grounds the choices: what it names in the world's own words is followed, and
each of its other words is matched by the meaning encoder to the nearest thing, sky or ground
the world has ("ocean" -> the sea, "puppy" -> a dog), if any is near enough. What is left
the plan says plainly it cannot draw.

    >>> from wordsworlds.hybrid.planner import ScenePlanner
    >>> from wordsworlds.presets import get_preset
    >>> planner = ScenePlanner.load(get_preset("tiny"))
    >>> plan = planner.plan("a sunset over the sea")      # doctest: +SKIP
    >>> plan.caption                                       # doctest: +SKIP
    'a large orange sun at the top, on the sea at sunset'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..errors import check_text
from ..models import load_llm, load_sentence_encoder
from ..presets import Preset
from ..words.next_token import TextGenerator
from ..world.scene import (
    COLOURS, COUNT_WORDS, FUNCTION_WORDS, GROUND_PHRASES, GROUNDS, KIND_WORDS, KINDS, MAX_OBJECTS, POSITION_PHRASES,
    POSITIONS, SIZE_WORDS, SIZES, SKY_PHRASES, SKIES, WORLD_WORDS, Scene, SceneError, WorldObject, background_of,
    caption, parse_background, parse_objects, plural, sky_and_ground,
)

MAX_IDEA_CHARS = 500
AVOID_PENALTY = math.log(0.05)
FOLLOW_BONUS = math.log(100.0)
# Counting is what a 135M model copies worst: with a bonus of 100 it still ended 4 of 70
# three-object descriptions after two objects (hybrid/evaluate.py's set), so "and" / "." follow
# the description far more strongly than the attributes do.
COUNT_BONUS = math.log(1e4)
MENTION_BONUS = math.log(20.0)
NEAR_BONUS = math.log(8.0)
# A request word stands for a world value when the meaning encoder puts them this close
# (cosine of all-MiniLM-L6-v2 embeddings; "ocean"/"sea" 0.73, "puppy"/"dog" 0.80, "castle"/"house" 0.46).
NEAR_ENOUGH = 0.55
# Everyday words for a person that the meaning encoder puts far from every name of one (all-MiniLM-L6-v2:
# "man" 0.41 from "person", "lady" 0.58 but "man" nearer "house" than "child"): the room's commonest
# things, so named here rather than left to a threshold.
PEOPLE_WORDS = frozenset({"man", "men", "woman", "women", "boy", "boys", "girl", "girls", "lady", "ladies",
                          "baby", "babies", "kid", "kids", "human", "humans", "someone", "somebody"})
PRONOUNS = frozenset("his her hers him she they them their theirs our ours your yours mine".split())  # not things
NUMBER_WORDS = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "many": 4, "lots": 4}
# What colour a thing is when the request does not say (the LLM is nudged to it, mildly).
USUAL_COLOURS = {
    "sun": "yellow", "moon": "white", "star": "yellow", "cloud": "white", "tree": "green", "flower": "red",
    "house": "red", "car": "red", "boat": "brown", "fish": "blue", "bird": "blue", "cat": "orange", "dog": "brown",
    "person": "blue", "snowman": "white", "rocket": "red", "heart": "red", "mountain": "purple",
}

# Where a thing usually is, when the request does not say (a mild nudge, as the colours).
USUAL_SKIES = {"moon": "night", "star": "night", "rocket": "space"}
USUAL_GROUNDS = {"snowman": "snow", "boat": "sea", "fish": "sea", "tree": "grass", "flower": "grass", "house": "grass",
                 "car": "grass", "dog": "grass", "cat": "grass", "person": "grass", "mountain": "grass"}

FEW_SHOT = """Draw each request as a storybook picture. Things: """ + ", ".join(KINDS) + """. Colours: """ + ", ".join(COLOURS) + """. Sizes: small, large. Places: on the left, on the right, at the top, at the bottom, in the center. Sky: day, night, sunset, space. Ground: sea, grass, snow, none.

Request: a sunset over the sea
Picture: sky sunset, ground sea: a large orange sun at the top.
Request: a small green car on the right
Picture: sky day, ground grass: a small green car on the right.
Request: a cat on a boat
Picture: sky day, ground sea: a large brown boat at the bottom and a small orange cat in the center.
Request: a snowman at night
Picture: sky night, ground snow: a large white snowman in the center and a small white moon at the top.
Request: a rocket flying to the stars
Picture: sky space, ground none: a large red rocket in the center and three small yellow stars at the top.
Request: a garden with two tiny red flowers on the left
Picture: sky day, ground grass: two small red flowers on the left.
Request: {idea}
Picture: sky"""


@dataclass
class Choice:
    slot: str  # "sky", "ground", "count", "size", "colour", "kind", "position" or "next"
    chosen: str
    probability: float  # the LLM's probability for it, renormalised over the allowed options
    options: dict[str, float]  # every allowed option -> probability


@dataclass
class Plan:
    scene: Scene
    choices: list[Choice] = field(default_factory=list)
    drawn_as: dict[str, str] = field(default_factory=dict)  # a request word -> the world value that stands for it
    cannot_draw: tuple[str, ...] = ()  # the request's words the world has nothing for
    notes: tuple[str, ...] = ()  # what of the request was clamped to the world, in words

    @property
    def caption(self) -> str:
        return caption(self.scene)

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "scene": self.scene.to_dict(),
            "drawn_as": self.drawn_as,
            "cannot_draw": list(self.cannot_draw),
            "notes": list(self.notes),
            "choices": [{"slot": c.slot, "chosen": c.chosen, "probability": round(c.probability, 4),
                         "options": {k: round(v, 4) for k, v in c.options.items()}} for c in self.choices],
        }


def validate_idea(idea) -> str:
    return check_text(idea, "the request", MAX_IDEA_CHARS)


_VALUE_WORDS = {  # slot -> world value -> the words that name it
    "size": SIZE_WORDS,
    "kind": {k: ws + tuple(plural(w) for w in ws) for k, ws in KIND_WORDS.items()},
    "colour": {c: (c,) for c in COLOURS},
    "sky": {sky: tuple(w for ph in phrases for w in ph.split() if w not in FUNCTION_WORDS) for sky, phrases in SKY_PHRASES.items()},
    "ground": {g: tuple(w for ph in phrases for w in ph.split() if w not in FUNCTION_WORDS) for g, phrases in GROUND_PHRASES.items()},
}
_VALUE_WORDS["sky"]["day"] = ("sunny", "daytime", "day")
_VALUE_WORDS["sky"]["sunset"] = ("sunset",)
_VALUE_WORDS["sky"]["night"] = ("night",)
_VALUE_WORDS["sky"]["space"] = ("space",)
# The values a request word may be matched to by meaning, with the words the encoder reads for each: every
# world name of every kind ("girl" is nearest "child", 0.59, a name of the person; "person" itself 0.49).
_NEAR_TARGETS = [("kind", k, w) for k, ws in KIND_WORDS.items() for w in ws] + [("sky", "night", "night"), ("sky", "sunset", "sunset"),
                 ("sky", "space", "outer space"), ("ground", "sea", "sea"), ("ground", "grass", "grass"),
                 ("ground", "snow", "snow")]


@dataclass
class Wanted:
    """One thing the request asks for, with what it says of it (None: unsaid)."""

    kind: str
    colour: str | None = None
    size: str | None = None
    count: int | None = None
    position: str | None = None


@dataclass
class Grounding:
    """What the request itself says, as a bias on the LLM's choices, and what of it the world cannot draw.

    A 135M model copies poorly from its prompt, so options the request names get a bonus in
    log space: a request that is already a scene description is followed object by object
    (strongly); otherwise each thing it names, in the world's words or by a word the meaning
    encoder puts near one ("ocean" -> sea), is planned once, with the colour, size, number and
    place said just before or after it. The LLM's own probabilities are still what the trace shows.
    """

    objects: tuple | None  # the request's own objects, in its order, if it is a scene description
    wanted: list  # Wanted, in the request's order, at most MAX_OBJECTS
    backgrounds: dict  # "sky"/"ground" -> set of values the request names or near-names
    drawn_as: dict  # request word -> the world value it was matched to
    cannot_draw: tuple
    notes: tuple

    @classmethod
    def of(cls, idea: str, encoder=None) -> "Grounding":
        text = idea.lower()
        words = re.findall(r"[a-z]+", text)
        notes = []
        outside = [w for w in dict.fromkeys(words) if w not in WORLD_WORDS and w not in FUNCTION_WORDS
                   and w not in NUMBER_WORDS and w not in PRONOUNS and len(w) > 2]
        near = {w: ("kind", "person") for w in outside if w in PEOPLE_WORDS}
        unknown = [w for w in outside if w not in near]
        near |= _nearest(encoder, unknown) if encoder is not None and unknown else {}
        drawn_as = {w: value if slot == "kind" else f"{value} ({slot})" for w, (slot, value) in near.items()}
        backgrounds = {slot: {v for v, names in _VALUE_WORDS[slot].items() if set(words) & set(names)}
                       | {v for s, v in near.values() if s == slot} for slot in ("sky", "ground")}
        if "space" in backgrounds["sky"] and backgrounds["ground"]:
            notes.append("space has no ground: drew it without the " + " or ".join(sorted(backgrounds["ground"])))
            backgrounds["ground"] = set()
        for slot in ("sky", "ground"):
            if len(backgrounds[slot]) > 1:
                notes.append(f"one {slot} per picture: the request names {' and '.join(sorted(backgrounds[slot]))}")
        wanted, seen_kinds = [], set()
        kind_of = {w: k for k, ws in _VALUE_WORDS["kind"].items() for w in ws}
        for i, word in enumerate(words):
            kind = kind_of.get(word) or (near[word][1] if word in near and near[word][0] == "kind" else None)
            if kind is None:
                continue
            thing = Wanted(kind)
            for before in reversed(words[max(0, i - 3):i]):  # "two tiny red cats"
                if before in COLOURS and thing.colour is None:
                    thing.colour = before
                elif before in _SIZE_OF and thing.size is None:
                    thing.size = _SIZE_OF[before]
                elif before in _COUNT_OF and thing.count is None:
                    thing.count = _COUNT_OF[before]
                elif before in NUMBER_WORDS and thing.count is None:
                    thing.count = 3
                    notes.append(f"at most three of a thing: asked for {NUMBER_WORDS[before]} {word}, drew three")
            if thing.count is None and word != KIND_WORDS[kind][0] and word.endswith("s") and word not in KIND_WORDS[kind]:
                thing.count = 2  # "cats": more than one
            after = text.split(word, 1)[1][:24] if word in text else ""
            thing.position = next((p for p, phrases in POSITION_PHRASES.items() if any(after.lstrip(" ,").startswith(ph)
                                                                                           for ph in phrases)), None)
            if kind in seen_kinds:
                continue
            seen_kinds.add(kind)
            wanted.append(thing)
        if len(wanted) > MAX_OBJECTS:
            notes.append(f"at most {MAX_OBJECTS} things in a picture: left out "
                         f"{', '.join(t.kind for t in wanted[MAX_OBJECTS:])}")
            wanted = wanted[:MAX_OBJECTS]
        colours_said = [w for w in words if w in COLOURS]
        if len(colours_said) > max(1, len(wanted)):
            notes.append(f"one colour per thing: the request names {len(colours_said)} colours for "
                         f"{max(1, len(wanted))} thing{'s' if len(wanted) > 1 else ''}")
        try:
            objects = parse_objects(idea)
        except SceneError:
            objects = None
        cannot = tuple(w for w in outside if w not in near)
        return cls(objects, wanted, backgrounds, drawn_as, cannot, tuple(notes))

    def bias(self, slot: str, value, index: int) -> float:
        if slot in ("sky", "ground"):
            if self.backgrounds[slot]:
                return MENTION_BONUS if value in self.backgrounds[slot] else 0.0
            usual = {(USUAL_SKIES if slot == "sky" else USUAL_GROUNDS).get(t.kind) for t in self.wanted}
            return MENTION_BONUS if value in usual else 0.0
        if self.objects is not None:
            objects = self.objects
            if slot == "next":
                wanted = "and" if index < len(objects) else "."
                return COUNT_BONUS if value == wanted else 0.0
            if index < len(objects):
                return FOLLOW_BONUS if getattr(objects[index], slot) == value else 0.0
            return 0.0
        if slot == "next":  # as many things as the request names
            wanted = "and" if index < len(self.wanted) else "."
            return COUNT_BONUS if value == wanted and self.wanted else 0.0
        if index >= len(self.wanted):
            return 0.0
        thing = self.wanted[index]
        said = getattr(thing, slot)
        if said is not None:  # each thing the request names must be in the plan
            return (COUNT_BONUS if slot == "kind" else FOLLOW_BONUS) if value == said else 0.0
        if slot == "colour":  # unsaid: the thing's usual colour, mildly
            return NEAR_BONUS if value == USUAL_COLOURS[thing.kind] else 0.0
        return 0.0


_SIZE_OF = {w: size for size, ws in SIZE_WORDS.items() for w in ws}
_COUNT_OF = {w: n for n, ws in COUNT_WORDS.items() for w in ws} | {"an": 1}


def _nearest(encoder, words: list[str]) -> dict[str, tuple[str, str]]:
    """Each word the meaning encoder puts near enough to a world value -> (slot, value)."""
    targets = [text for _, _, text in _NEAR_TARGETS]
    vectors = encoder.encode(words + targets, normalize_embeddings=True)
    similarity = vectors[: len(words)] @ vectors[len(words):].T
    found = {}
    for i, word in enumerate(words):
        best = int(similarity[i].argmax())
        if similarity[i, best] >= NEAR_ENOUGH:
            slot, value, _ = _NEAR_TARGETS[best]
            found[word] = (slot, value)
    return found


class ScenePlanner:
    def __init__(self, model, tokenizer, encoder=None):
        self.model, self.tokenizer, self.encoder = model.eval(), tokenizer, encoder

    @classmethod
    def load(cls, preset: Preset) -> "ScenePlanner":
        """A planner on the preset's LLM and meaning encoder (each loaded once per process, models.py)."""
        llm = load_llm(preset)
        return cls(llm.model, llm.tokenizer, load_sentence_encoder(preset).model)

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
        grounding = Grounding.of(idea, self.encoder)
        try:
            asked_background = parse_background(idea)
        except SceneError:
            asked_background = None
        avoided = {(o.size, o.colour, o.kind, o.position) for o in avoid.objects} if avoid else set()

        def choose(slot, options, extra_bias=None):
            nonlocal cache, last_logits
            texts = list(options)
            llm_scores, cache, last_logits, best_index = self._choose(
                cache, last_logits, texts,
                [grounding.bias(slot, options[t], len(objects)) + (extra_bias or {}).get(options[t], 0.0)
                 for t in texts],
                temperature, generator,
            )
            total = torch.logsumexp(torch.tensor(llm_scores), 0).item()
            probs = {t.strip(" ,:."): math.exp(score - total) for t, score in zip(texts, llm_scores)}
            best = texts[best_index]
            choices.append(Choice(slot, best.strip(" ,:."), probs[best.strip(" ,:.")], probs))
            return options[best]

        follow = {}
        if asked_background is not None:  # a background said in the world's own words is followed as said
            sky_asked, ground_asked = sky_and_ground(asked_background)
            follow = {"sky": {sky_asked: COUNT_BONUS}}
            if ground_asked or not grounding.backgrounds["ground"]:  # "at night" alone: no ground; "ocean at night": the sea
                follow["ground"] = {ground_asked or "none": COUNT_BONUS}
        sky = choose("sky", {f" {s}": s for s in SKIES}, follow.get("sky"))
        grounds = {", ground none:": "none"} if sky == "space" else {f", ground {g}:": g for g in (*GROUNDS, "none")}
        ground = choose("ground", grounds, follow.get("ground"))
        while True:
            count = choose("count", {f" {COUNT_WORDS[n][0]}": n for n in (1, 2, 3)})
            size = choose("size", {f" {s}": s for s in SIZES})
            colour = choose("colour", {f" {c}": c for c in COLOURS})
            nouns = {f" {KIND_WORDS[k][0] if count == 1 else plural(KIND_WORDS[k][0])}": k for k in KINDS}
            kind = choose("kind", nouns)
            free = [p for p in POSITIONS if p not in {o.position for o in objects}]
            # A rewrite steers away from repeating an object that failed, without forbidding it.
            avoid_bias = {p: AVOID_PENALTY for p in free if (size, colour, kind, p) in avoided}
            position = choose("position", {f" {POSITION_PHRASES[p][0]}": p for p in free}, avoid_bias)
            objects.append(WorldObject(position, kind, colour, size, count))
            more = "and" if len(objects) < max_objects else None
            if not more or choose("next", {" and": "and", ".": "."}) == ".":
                break
        background = background_of(sky, None if ground == "none" else ground)
        return Plan(Scene(tuple(objects), background), choices, grounding.drawn_as, grounding.cannot_draw,
                    grounding.notes)

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
