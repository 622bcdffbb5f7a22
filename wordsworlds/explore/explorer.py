"""The embedding explorer: the same words in meaning space and appearance space, side by side.

`explore` validates the input, embeds the words in each chosen space (spaces.py),
projects them (projection.py) and measures where the spaces agree and where they do not;
figures.py draws the result.

    >>> from wordsworlds.explore.explorer import explore
    >>> from wordsworlds.presets import get_preset
    >>> result = explore(get_preset("tiny"), "dog, puppy, banana, car", spaces=["minilm"])
    >>> result.neighbours("puppy", k=1)[0]["neighbour"]
    'dog'

    python -m wordsworlds embed dog puppy banana car --space minilm --space clip_text --json
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelUnavailable, check_number, check_text
from ..presets import Preset
from . import projection as proj
from ..world.scene import SCENERY_WORDS, outside_words
from .spaces import SPACES, Sources, count_cached, embed, image_template, rendered_images

MAX_WORDS = 500
MAX_WORD_CHARS = 200
MAX_INPUT_CHARS = MAX_WORDS * (MAX_WORD_CHARS + 2)
DEFAULT_SPACES = ("minilm", "llm_hidden", "clip_text", "image_latents")
# Grey levels of spread along a row, in the most spread tenth of the rows: a storybook background
# is the same colour along every row (a sky is a vertical gradient, the ground a band), so only
# things drawn on it spread a row (a small tree alone spreads 12 of the 64 rows). See empty_canvas().
BLANK_ROW_STD = 8.0
WORD_SETS_FILE = Path(__file__).resolve().parents[2] / "examples" / "word_sets.json"


def word_sets(path: Path = WORD_SETS_FILE) -> dict[str, dict]:
    """The curated sets: {name: {"about": ..., "words": [...], "template": ...}}."""
    return json.loads(Path(path).read_text())


def parse_words(words) -> tuple[list[str], list[str]]:
    """(unique words in input order, notices). Text is split on commas and new lines."""
    if isinstance(words, str):
        if len(words) > MAX_INPUT_CHARS:
            raise InputError(f"the input is {len(words):,} characters; the limit is {MAX_INPUT_CHARS:,}")
        words = re.split(r"[,\n]", words)
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise InputError("words must be text (comma or newline separated) or a list of strings")
    items = [" ".join(w.split()) for w in words]
    items = [w for w in items if w]
    if not items:
        raise InputError("no words given; type a few words or phrases, separated by commas or new lines")
    if len(items) > MAX_WORDS:
        raise InputError(f"{len(items):,} words; the limit is {MAX_WORDS}")
    for number, item in enumerate(items, 1):
        if len(item) > MAX_WORD_CHARS:
            raise InputError(f"item {number} ({item[:24]!r}…) is {len(item):,} characters; the limit is {MAX_WORD_CHARS}")
    unique = list(dict.fromkeys(items))
    notices = []
    if len(unique) < len(items):
        repeated = sorted({w for w in items if items.count(w) > 1})
        notices.append(f"merged {len(items) - len(unique)} duplicate(s): {', '.join(repeated)}")
    if len(unique) < 2:
        raise InputError("only one distinct word; type at least two to compare")
    return unique, notices


def validate_template(template) -> str:
    template = template or ""
    if not isinstance(template, str) or len(template.strip()) > MAX_WORD_CHARS:
        raise InputError(f"the template must be text of at most {MAX_WORD_CHARS} characters")
    if template and template.count("{}") != 1:
        raise InputError("the template must contain {} exactly once, where each word goes (e.g. 'a photo of a {}')")
    return template.strip()


def parse_layer(llm_layer) -> int | None:
    """None (the middle layer) for None or blank text; else a whole number (text "7" is 7)."""
    if llm_layer is None or (isinstance(llm_layer, str) and not llm_layer.strip()):
        return None
    if isinstance(llm_layer, str):
        try:
            llm_layer = float(llm_layer.strip())
        except ValueError:
            raise InputError(f"the LLM layer must be a whole number, got {llm_layer!r}") from None
    return check_number("the LLM layer", llm_layer, int)


def optional_word(what: str, value) -> str:
    """A word the explorer may be given (an anchor, the highlighted word): "" when absent, else text of
    at most MAX_WORD_CHARS characters, spaces collapsed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return " ".join(check_text(value, what, MAX_WORD_CHARS).split())


def validate_spaces(spaces) -> list[str]:
    spaces = [spaces] if isinstance(spaces, str) else list(spaces or [])
    if not spaces:
        raise InputError("choose at least one space")
    unknown = [s for s in spaces if s not in SPACES]
    if unknown:
        raise InputError(f"unknown space(s) {', '.join(map(str, unknown))}; choose from {', '.join(SPACES)}")
    return list(dict.fromkeys(spaces))


@dataclass
class Exploration:
    words: list[str]
    projection: str
    dimensions: int
    highlight: str
    template: str = ""
    sources: Sources | None = None
    spaces: list[str] = field(default_factory=list)  # the spaces that produced vectors, in order
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, tuple] = field(default_factory=dict)
    similarity: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def neighbours(self, word: str, k: int = 5) -> list[dict]:
        if word not in self.words or isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"neighbours need one of the words and k >= 1, got {word!r} and {k!r}")
        index = self.words.index(word)
        return [
            {"space": space, "rank": rank, "neighbour": other, "cosine": round(cos, 4), "distance": round(1 - cos, 4)}
            for space in self.spaces
            for rank, (other, cos) in enumerate(proj.neighbours(self.similarity[space], self.words, index, k), 1)
        ]

    def agreements(self) -> list[dict]:
        return [
            {"space_a": a, "space_b": b} | proj.agreement(self.similarity[a], self.similarity[b])
            for i, a in enumerate(self.spaces) for b in self.spaces[i + 1 :]
        ]

    def rank_shifts(self, k: int = 5) -> list[dict]:
        return [
            {"space_a": a, "space_b": b} | row
            for i, a in enumerate(self.spaces) for b in self.spaces[i + 1 :]
            for row in proj.rank_shifts(self.similarity[a], self.similarity[b], self.words, k)
        ]

    def to_dict(self, k: int = 5) -> dict:
        return {
            "words": self.words, "projection": self.projection, "dimensions": self.dimensions, "notices": self.notices,
            "spaces": {
                s: {"kind": SPACES[s].kind, "axes": list(self.axes[s]), "seconds": round(self.seconds[s], 4),
                    "cached": self.cached[s], "coordinates": np.round(self.coords[s], 5).tolist(),
                    "similarity": np.round(self.similarity[s], 5).tolist()}
                for s in self.spaces
            },
            "neighbours": {w: self.neighbours(w, k) for w in self.words},
            "agreement": self.agreements(), "rank_shifts": self.rank_shifts(k),
        }


def empty_canvas(image) -> bool:
    """True when a rendered thumbnail (uint8 HxWx3) shows a background and nothing on it."""
    return float(np.percentile(np.asarray(image, dtype=np.float32).std(axis=1).mean(-1), 90)) < BLANK_ROW_STD


def explore(preset: Preset, words, template: str = "", spaces=DEFAULT_SPACES, projection: str = "pca",
            dimensions: int = 2, anchor_from: str = "", anchor_to: str = "", highlight: str = "",
            llm_layer: int | None = None) -> Exploration:
    """Embed, project and compare. Every input is checked before any model work."""
    words, notices = parse_words(words)
    template = validate_template(template)
    spaces = validate_spaces(spaces)
    if projection not in proj.PROJECTIONS:
        raise InputError(f"unknown projection {projection!r}; choose from {', '.join(proj.PROJECTIONS)}")
    if str(dimensions) not in ("2", "3"):  # 2 or "2" (a form), never True or 2.5
        raise InputError(f"dimensions must be 2 or 3, got {dimensions!r}")
    dimensions = int(dimensions)
    anchor_from, anchor_to, highlight = (optional_word(name, value) for name, value in (
        ("the first anchor", anchor_from), ("the second anchor", anchor_to), ("the highlighted word", highlight)))
    anchors = []
    if projection == "anchors":
        anchors = [anchor_from, anchor_to]
        if not all(anchors) or max(map(len, anchors)) > MAX_WORD_CHARS:
            raise InputError(f"custom axes need two anchor words of 1 to {MAX_WORD_CHARS} characters (e.g. small → large)")
        if anchors[0] == anchors[1]:
            raise InputError("the two anchor words must differ")
    llm_layer = parse_layer(llm_layer)
    if highlight and highlight not in words:  # e.g. the UI's choice from words since changed: say so, go on
        notices.append(f"'{highlight}' is not among the words; highlighting '{words[0]}'")
    highlight = highlight if highlight in words else words[0]

    sources = Sources(preset, llm_layer)
    result = Exploration(words, projection, dimensions, highlight, template, sources, notices=notices)
    failures = []
    for space in spaces:
        started = time.perf_counter()
        cached = count_cached(words + anchors, space, template, sources)
        try:
            vectors = embed(words + anchors, space, template, sources=sources)
        except ModelUnavailable as error:
            failures.append(f"{SPACES[space].title}: {error}")
            continue
        anchor_vectors = list(zip(anchors, vectors[len(words):])) or None
        coords, notice, axes = proj.project(vectors[: len(words)], projection, dimensions, anchor_vectors)
        if notice and notice not in result.notices:
            result.notices.append(notice)
        result.spaces.append(space)
        result.coords[space], result.axes[space] = coords, axes
        result.similarity[space] = proj.cosine_matrix(vectors[: len(words)])
        result.seconds[space], result.cached[space] = time.perf_counter() - started, cached
    result.notices += [f"skipped {f}" for f in failures]
    if "image_latents" in result.spaces:
        blank = [w for w, image in zip(words, rendered_images(words, template, sources))
                 if image is not None and empty_canvas(image)]
        scenery = [w for w in blank if preset.storybook_world and w.lower() in SCENERY_WORDS]
        blank = [w for w in blank if w not in scenery]
        if scenery:
            result.notices.append(
                f"{', '.join(scenery)} {'names' if len(scenery) == 1 else 'name'} a background in the storybook "
                "world, not a thing: drawn as a bare scene with nothing in it")
        if blank:
            result.notices.append(
                f"{', '.join(blank)} {'renders' if len(blank) == 1 else 'render'} as an empty canvas: the diffusion "
                "model draws only what it was trained on, so in the image-latents space "
                f"{'that word sits' if len(blank) == 1 else 'these words sit'} at one point, whatever they mean")
        guessed = [w for w in words if outside_words(w)] if preset.storybook_world else []
        if guessed:
            result.notices.append(
                f"the storybook world has no word for {', '.join(guessed)}: the picture is the model's guess from "
                f"a word it never saw, drawn as \"{image_template(template, preset)}\"")
    if not result.spaces:
        raise ModelUnavailable("; ".join(failures))
    return result
