"""The storybook world: scenes of everyday things on a background, their captions, and a parser back.

A scene is a background (a sky, over the sea, grass or snow or none; or space) and one to three objects. Each
object is a kind of thing (a sun, a cat, a boat, ...) of one colour and size, one to three of
them, at one of five named places. Everything here is deterministic from a seed, so the world
can be redrawn anywhere and every generated image can be checked against what was asked.

    >>> from wordsworlds.world.scene import random_scene, caption, parse_caption
    >>> import random
    >>> scene = random_scene(random.Random(0))
    >>> parse_caption(caption(scene)) == scene
    True
    >>> caption(parse_caption("two small white clouds at the top and a big yellow sun on the left, at sunset"))
    'a large yellow sun on the left and two small white clouds at the top, at sunset'
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from ..errors import InputError

KINDS = ("sun", "moon", "star", "cloud", "tree", "flower", "house", "car", "boat", "fish", "bird", "cat", "dog",
         "person", "snowman", "rocket", "heart", "mountain")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "brown")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom", "center")
SKIES = ("day", "night", "sunset", "space")
GROUNDS = ("sea", "grass", "snow")
# A background is a sky, or a ground under a sky (none under space): "sea at sunset".
BACKGROUNDS = SKIES + tuple(g if sky == "day" else f"{g} at {sky}" for g in GROUNDS for sky in SKIES[:3])
MAX_OBJECTS = 3

# How each value may be worded; the first wording is the canonical one.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
KIND_WORDS = {
    "sun": ("sun",), "moon": ("moon",), "star": ("star",), "cloud": ("cloud",), "tree": ("tree",),
    "flower": ("flower",), "house": ("house", "cottage"), "car": ("car",), "boat": ("boat", "ship"),
    "fish": ("fish",), "bird": ("bird",), "cat": ("cat", "kitten"), "dog": ("dog", "puppy"),
    "person": ("person", "child"), "snowman": ("snowman",), "rocket": ("rocket", "spaceship"),
    "heart": ("heart",), "mountain": ("mountain",),
}
IRREGULAR_PLURALS = {"fish": "fish", "person": "people", "child": "children", "snowman": "snowmen",
                     "puppy": "puppies"}
COUNT_WORDS = {1: ("a", "one"), 2: ("two",), 3: ("three",)}
POSITION_PHRASES = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "on top"),
    "bottom": ("at the bottom", "below"),
    "center": ("in the center", "in the middle"),
}
SKY_PHRASES = {
    "day": ("under a blue sky", "on a sunny day"),
    "night": ("at night", "under a night sky"),
    "sunset": ("at sunset", "under a sunset sky"),
    "space": ("in space", "in outer space"),
}
GROUND_PHRASES = {"sea": ("on the sea", "by the sea"), "grass": ("on the grass", "in a meadow"),
                  "snow": ("in the snow", "on a snowy field")}
JOINERS = (" and ", ", ", " with ")

# Held out of training, so the evaluation can show what generalises: these colour-kind pairs
# never appear in the training captions, though each colour and each kind appears with others.
HELD_OUT_PAIRS = frozenset({("purple", "car"), ("orange", "fish"), ("green", "house"), ("blue", "cat"),
                            ("white", "bird")})


class SceneError(InputError):
    """A scene spec or caption that does not describe a valid storybook-world scene."""


def sky_and_ground(background: str) -> tuple[str, str | None]:
    """"sea at sunset" -> ("sunset", "sea"); "sea" -> ("day", "sea"); "night" -> ("night", None)."""
    if background in SKIES:
        return background, None
    ground, _, sky = background.partition(" at ")
    return sky or "day", ground


def background_of(sky: str | None, ground: str | None) -> str | None:
    """The background named by a sky and a ground (either may be unsaid); None if neither is said.
    A ground alone is under the day sky; a sky alone has no ground."""
    if ground is None:
        return sky
    sky = sky or "day"
    if sky == "space":
        raise SceneError("space has no ground: nothing stands on the sea, grass or snow in space")
    return ground if sky == "day" else f"{ground} at {sky}"


def background_phrase(background: str, rng: random.Random | None = None) -> str:
    """The background in words: "at sunset", "on the sea", "in the snow at night"."""
    sky, ground = sky_and_ground(background)
    pick = (lambda options: options[0]) if rng is None else rng.choice
    if ground is None:
        return pick(SKY_PHRASES[sky])
    if sky == "day" and (rng is None or rng.random() < 0.7):
        return pick(GROUND_PHRASES[ground])
    return f"{pick(GROUND_PHRASES[ground])} {pick(SKY_PHRASES[sky])}"


def plural(word: str) -> str:
    return IRREGULAR_PLURALS.get(word, word + "s")


@dataclass(frozen=True, order=True)
class WorldObject:
    position: str
    kind: str
    colour: str
    size: str
    count: int = 1

    def __post_init__(self):
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
            ("count", self.count, COUNTS),
        ):
            if value not in allowed:
                raise SceneError(f"unknown {name} {value!r}; expected one of {', '.join(map(str, allowed))}")

    def phrase(self) -> str:
        return self.worded(COUNT_WORDS[self.count][0], self.size, KIND_WORDS[self.kind][0],
                           POSITION_PHRASES[self.position][0])

    def worded(self, count_word: str, size_word: str, kind_word: str, where: str) -> str:
        noun = kind_word if self.count == 1 else plural(kind_word)
        return f"{count_word} {size_word} {self.colour} {noun} {where}"

    def noun(self) -> str:
        """"red cat", "two red cats": what to call it in a finding."""
        name = f"{self.colour} {KIND_WORDS[self.kind][0]}"
        return name if self.count == 1 else f"{COUNT_WORDS[self.count][0]} {self.colour} {plural(KIND_WORDS[self.kind][0])}"


@dataclass(frozen=True)
class Scene:
    """A background and objects sorted by position, at most one object per position.

    `background` is None only in a request that names none (a drawn or read scene always has one).
    """

    objects: tuple[WorldObject, ...]
    background: str | None = None

    def __post_init__(self):
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise SceneError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        positions = [o.position for o in self.objects]
        if len(set(positions)) != len(positions):
            raise SceneError("two objects share a position; each position holds at most one object")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise SceneError(f"unknown background {self.background!r}; expected one of {', '.join(BACKGROUNDS)}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position))))

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}


def random_object(rng: random.Random, position: str) -> WorldObject:
    count = rng.choices(COUNTS, weights=(4, 1, 1))[0]
    return WorldObject(position, rng.choice(KINDS), rng.choice(COLOURS), rng.choice(SIZES), count)


def random_scene(rng: random.Random, max_objects: int = MAX_OBJECTS, held_out: str = "exclude") -> Scene:
    """A random scene. held_out: "exclude" (training), "only" (at least one held-out pair), "any"."""
    while True:
        count = rng.randint(1, max_objects)
        objects = tuple(random_object(rng, p) for p in rng.sample(POSITIONS, count))
        has_held_out = any((o.colour, o.kind) in HELD_OUT_PAIRS for o in objects)
        if held_out == "any" or (held_out == "exclude") != has_held_out:
            return Scene(objects, rng.choice(BACKGROUNDS))


def caption(scene: Scene, rng: random.Random | None = None, order: list[WorldObject] | None = None) -> str:
    """The scene in words: the world's own words in `order` (default: by place); with an rng, varied
    wording and background placement, and a shuffled order unless one is given."""
    objects = list(order or scene.objects)
    if sorted(objects, key=lambda o: POSITIONS.index(o.position)) != list(scene.objects):
        raise ValueError("the order must list the scene's own objects")
    if rng is None:
        text = " and ".join(o.phrase() for o in objects)
        return text if scene.background is None else f"{text}, {background_phrase(scene.background)}"
    if order is None:
        rng.shuffle(objects)
    phrases = [o.worded(rng.choice(COUNT_WORDS[o.count]), rng.choice(SIZE_WORDS[o.size]), rng.choice(KIND_WORDS[o.kind]),
                        rng.choice(POSITION_PHRASES[o.position])) for o in objects]
    text = phrases[0]
    for phrase in phrases[1:]:
        text += rng.choice(JOINERS) + phrase
    if scene.background is None:
        return text
    where = background_phrase(scene.background, rng)
    return f"{where}, {text}" if rng.random() < 0.3 else f"{text}, {where}"


def _alternation(phrases) -> str:
    return "|".join(sorted((re.escape(p) for p in phrases), key=len, reverse=True))


_WORD_TO: dict[str, tuple[str, object]] = {}
for _kind, _table in (("size", SIZE_WORDS), ("kind", KIND_WORDS), ("count", COUNT_WORDS)):
    for _canon, _words in _table.items():
        for _w in _words:
            _WORD_TO[_w] = (_kind, _canon)
_WORD_TO["an"] = ("count", 1)
# A noun -> (kind, whether it names one, whether it names several): "fish" does both.
_NOUNS = {w: (k, True, False) for k, ws in KIND_WORDS.items() for w in ws}
for _kind, _words in KIND_WORDS.items():
    for _w in _words:
        _NOUNS[plural(_w)] = (_kind, plural(_w) == _w, True)
for _c in COLOURS:
    _WORD_TO[_c] = ("colour", _c)
_PHRASE_TO_POSITION = {p: pos for pos, ps in POSITION_PHRASES.items() for p in ps}
_PHRASE_TO_SKY = {p: sky for sky, ps in SKY_PHRASES.items() for p in ps}
_PHRASE_TO_GROUND = {p: ground for ground, ps in GROUND_PHRASES.items() for p in ps}
_OBJECT_RE = re.compile(r"\b(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s+(" + _alternation(_PHRASE_TO_POSITION) + r")\b")
_BACKGROUND_RE = re.compile(r"\b(" + _alternation({**_PHRASE_TO_SKY, **_PHRASE_TO_GROUND}) + r")\b")


def parse_background(text: str) -> str | None:
    """The background a text names, None if it names none; SceneError if it names two skies,
    two grounds, or a ground in space."""
    phrases = _BACKGROUND_RE.findall(text.lower())
    skies = {_PHRASE_TO_SKY[p] for p in phrases if p in _PHRASE_TO_SKY}
    grounds = {_PHRASE_TO_GROUND[p] for p in phrases if p in _PHRASE_TO_GROUND}
    if len(skies) > 1 or len(grounds) > 1:
        raise SceneError(f"the text names {len(skies)} skies and {len(grounds)} grounds; a picture has one of each")
    return background_of(next(iter(skies), None), next(iter(grounds), None))


def parse_caption(text: str) -> Scene | None:
    """The scene a caption asks for, or None when the words are outside the world."""
    text = text.lower()
    objects = parse_objects(text)
    if not objects:
        return None
    try:
        return Scene(objects, parse_background(text))
    except SceneError:
        return None


def parse_objects(text: str) -> tuple[WorldObject, ...] | None:
    """The objects a caption names, in its order; None unless they form a valid scene."""
    found = []
    for match in _OBJECT_RE.finditer(_BACKGROUND_RE.sub(" ", text.lower())):
        words = [_WORD_TO.get(w, (None, None)) for w in match.groups()[:3]]
        noun = _NOUNS.get(match.group(4))
        if [k for k, _ in words] != ["count", "size", "colour"] or noun is None:
            continue
        (_, count), (_, size), (_, colour) = words
        kind, names_one, names_several = noun
        if not (names_one if count == 1 else names_several):  # "a ... cats", "two ... cat"
            continue
        found.append(WorldObject(_PHRASE_TO_POSITION[match.group(5)], kind, colour, size, count))
    try:
        Scene(tuple(found))
    except SceneError:
        return None
    return tuple(found)


# Words that carry no content of their own (articles, joiners, filler): never "outside the world".
FUNCTION_WORDS = frozenset(
    "a an one the and with of on in at to is are some draw make show me please picture image photo "
    "it its this that there here over under above near by for from into onto up down next beside behind "
    "front between".split()
)
# Words that name a background (a sky or a ground), not a thing: drawn alone, a bare scene.
SCENERY_WORDS = frozenset({*SKIES, *GROUNDS, "sky", "meadow"})
WORLD_WORDS = frozenset(
    set(_WORD_TO) | set(_NOUNS)
    | {w for ps in POSITION_PHRASES.values() for p in ps for w in p.split()}
    | {w for ps in (*SKY_PHRASES.values(), *GROUND_PHRASES.values()) for p in ps for w in p.split()}
    | {"middle", "centre", "sky"}
)


def outside_words(text: str) -> list[str]:
    """The content words of `text` that the world has no meaning for, in order, once each."""
    words = re.findall(r"[a-z]+", text.lower())
    return list(dict.fromkeys(w for w in words if w not in WORLD_WORDS and w not in FUNCTION_WORDS))


def world_summary() -> str:
    """The world in one sentence, for messages and prompts."""
    return (f"{len(KINDS)} kinds of thing ({', '.join(KINDS)}) in {len(COLOURS)} colours, two sizes, "
            f"one to three of each, at five places, under a {', '.join(SKIES[:3])} sky or in space, "
            f"over {', '.join(GROUNDS)} or none")


def world_note(text: str) -> str:
    """What to tell a person whose prompt is outside the world ("" when the prompt is a scene)."""
    if parse_caption(text) is not None:
        return ""
    outside = outside_words(text)
    named = f"; it has no {', '.join(outside[:6])}{', ...' if len(outside) > 6 else ''}" if outside else ""
    return (f"The miniature model knows only its storybook world: {world_summary()}{named}. Outside it, expect "
            "things the words did not ask for; the hybrid tab plans such ideas into the world.")
