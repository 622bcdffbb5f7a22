"""Errors and input checks shared by every part: the bottom of the package, importing nothing of it.

Every entry point (UI, API, CLI) checks its input with these before any model work, so the
same value gets the same bounds and the same message everywhere: out of range is refused,
never silently clamped.

    >>> from wordsworlds.errors import InputError, check_number
    >>> check_number("steps", 20, int, 1, 100)
    20
    >>> check_number("steps", 0, int, 1, 100)
    Traceback (most recent call last):
    ...
    wordsworlds.errors.InputError: steps must be between 1 and 100, got 0
"""

from __future__ import annotations

import math
import unicodedata
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 2000  # one limit for every prompt, words and worlds alike
MAX_IMAGE_SIDE = 4096  # pixels, for any picture a person uploads
MAX_UPLOAD = "16mb"  # Gradio's limit on any uploaded file (ui/serve.py)


class InputError(ValueError):
    """Input refused before any model work; the message is shown to the person as it is."""


class ModelUnavailable(RuntimeError):
    """A model the preset names cannot be loaded here (offline, a missing folder or package)."""


class RenderError(RuntimeError):
    """The model produced no usable image (NaN output)."""


def check_text(value, what: str = "the prompt", max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Non-empty text of at most `max_chars` characters."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{what} is empty; type a few words")
    if len(value) > max_chars:
        raise InputError(f"{what} is {len(value):,} characters; the limit is {max_chars:,}")
    control = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cc" and c not in "\n\t\r"})
    if control:
        raise InputError(f"{what} contains control characters ({', '.join(control[:3])}); type plain text")
    return value


def check_prompt(prompt) -> str:
    """The prompt every engine reads: text of 1 to MAX_PROMPT_CHARS characters."""
    return check_text(prompt, "the prompt", MAX_PROMPT_CHARS)


def check_number(name: str, value, kind=float, low: float | None = None, high: float | None = None):
    """A finite number (a whole one with kind=int) within [low, high]; booleans and text are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    if kind is int:
        if float(value) != int(value):
            raise InputError(f"{name} must be a whole number, got {value}")
        value = int(value)
    else:
        value = float(value)
    if low is not None and high is not None and not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    if low is not None and value < low:
        raise InputError(f"{name} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{name} must be at most {high:g}, got {value:g}")
    return value


def check_seed(seed, optional: bool = False) -> int | None:
    """A seed in 0..2**32-1; with `optional`, None or "" mean "no seed"."""
    if optional and (seed is None or seed == ""):
        return None
    return check_number("seed", seed, int, 0, MAX_SEED)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def check_image(image) -> Image.Image:
    """An uploaded picture as RGB: a PIL image, an RGB(A) array, or a file path. A file is checked from
    its header, before its pixels are decoded: a 12000x12000 PNG is refused without ~500 MB of decoding."""
    if isinstance(image, (str, Path)):
        unreadable = "that file is not an image this app can read (PNG or JPEG)"
        try:
            with warnings.catch_warnings():  # the size is checked just below, with a clearer message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(image)  # lazy: reads the header only
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise InputError(f"{unreadable}: {type(error).__name__}") from None
        with opened:
            _check_size(*opened.size)
            try:
                opened.load()
            except (OSError, ValueError, SyntaxError) as error:  # PIL's own errors for broken image data
                raise InputError(f"{unreadable}: {type(error).__name__}") from None
            image = opened.copy()
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8:
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError("upload an image file (PNG or JPEG)")
    _check_size(image.width, image.height)
    return image.convert("RGB")


def _check_size(width: int, height: int) -> None:
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise InputError(f"the image is {width}x{height}; the limit is {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels")
