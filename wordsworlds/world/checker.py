"""A GenEval-style checker: what was asked vs what the recognizer read, per category.

Categories follow GenEval (Ghosh et al., 2023), adapted to the storybook world: single
object, two objects (every asked kind present), counting (as many objects, and as many of
each thing, as asked), colour, size, position, and colour binding (with two or more
objects, each colour on the right kind); and the world's own: the kind of each thing, and
the background (only where the request names one).

    >>> from wordsworlds.world.scene import parse_caption
    >>> asked = parse_caption("a large red cat on the left, at night")
    >>> check(asked, asked).passed
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scene import Scene, SceneError, WorldObject

ATTRIBUTES = ("kind", "colour", "size", "count", "position")
CATEGORIES = ("single object", "two objects", "counting", "colour", "kind", "size", "position", "colour binding",
              "background")


@dataclass
class CheckResult:
    checks: dict[str, bool] = field(default_factory=dict)  # category -> passed (only the categories that apply)
    findings: list[str] = field(default_factory=list)  # what went wrong, in words the LLM can act on

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    @property
    def score(self) -> float:
        return sum(self.checks.values()) / len(self.checks) if self.checks else 0.0

    def to_dict(self) -> dict:
        return {"passed": self.passed, "score": self.score, "checks": self.checks, "findings": self.findings}


def match(asked: WorldObject, seen: list[WorldObject]) -> WorldObject | None:
    """The seen object that stands for an asked one: the same kind and colour (at the asked
    place if there are several), else whatever is at the asked place, else the same kind."""
    same_kind = [o for o in seen if (o.kind, o.colour) == (asked.kind, asked.colour)]
    if same_kind:
        return next((o for o in same_kind if o.position == asked.position), same_kind[0])
    at_place = [o for o in seen if o.position == asked.position]
    if at_place:
        return at_place[0]
    return next((o for o in seen if o.kind == asked.kind), None)


def check(asked: Scene, seen: Scene | None) -> CheckResult:
    """Compare the asked scene with the scene read from the image."""
    if not isinstance(asked, Scene):
        raise SceneError(f"the asked scene must be a Scene, got {type(asked).__name__}")
    if seen is not None and not isinstance(seen, Scene):
        raise SceneError(f"the seen scene must be a Scene or None, got {type(seen).__name__}")
    result = CheckResult()
    seen_objects = list(seen.objects) if seen else []

    def present(obj):  # a thing of the right kind and colour anywhere
        return any(o.kind == obj.kind and o.colour == obj.colour for o in seen_objects)

    if len(asked.objects) == 1:
        result.checks["single object"] = present(asked.objects[0])
    else:
        # GenEval's "two objects": every asked kind is there, whatever its colour.
        result.checks["two objects"] = all(any(o.kind == a.kind for o in seen_objects) for a in asked.objects)
        result.checks["colour binding"] = all(present(o) for o in asked.objects)
    result.checks["counting"] = len(seen_objects) == len(asked.objects)
    if not result.checks["counting"]:
        result.findings.append(f"asked for {len(asked.objects)} objects, saw {len(seen_objects)}")
    if asked.background is not None:
        result.checks["background"] = seen is not None and seen.background == asked.background
        if not result.checks["background"]:
            result.findings.append(f"the background came out {seen.background if seen else 'unreadable'}, "
                                   f"not {asked.background}")

    for category in ("colour", "kind", "size", "position"):
        result.checks[category] = True
    for obj in asked.objects:
        there = match(obj, seen_objects)
        if there is None:
            for category in ("colour", "kind", "size", "position", "counting"):
                result.checks[category] = False
            result.findings.append(f"{obj.phrase()}: nothing like it in the picture")
            continue
        for attribute in ATTRIBUTES:
            if getattr(there, attribute) != getattr(obj, attribute):
                result.checks["counting" if attribute == "count" else attribute] = False
                result.findings.append(f"{obj.phrase()}: the {attribute} came out {getattr(there, attribute)}")
    if result.checks.get("single object") is False or result.checks.get("two objects") is False:
        for obj in asked.objects:
            if not present(obj):
                result.findings.append(f"no {obj.colour} {obj.kind} anywhere")
    return result
