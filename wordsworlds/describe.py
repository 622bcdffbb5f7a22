"""The describer: reads a picture back into words (and, in the shapes world, into a scene).

With the tiny preset this is the project's own recognizer (wordsworlds/world/recognizer.py).

    >>> from wordsworlds.describe import describe
    >>> scene, text = describe(image)           # doctest: +SKIP
"""

from __future__ import annotations

import functools

from PIL import Image

from .presets import get_preset
from .text import InputError
from .world.recognizer import Recognizer
from .world.scene import Scene, caption


@functools.lru_cache(maxsize=1)
def shared_recognizer() -> Recognizer:
    return Recognizer.load()


def describe(image: Image.Image) -> tuple[Scene | None, str]:
    """(scene or None, a caption of what the picture shows). Hub presets describe in free text
    with a vision-language model and read no scene."""
    if not isinstance(image, Image.Image):
        raise InputError("the describer needs an image")
    describer = get_preset().describer
    if describer != "shapes-recognizer":
        from .hub import describe_image

        return None, describe_image(image, describer)
    scene = shared_recognizer().read([image])[0]
    return scene, caption(scene) if scene else "no shapes-world scene (empty, or more than three objects)"
