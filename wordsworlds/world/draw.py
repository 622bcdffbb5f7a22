"""Drawing shapes-world scenes as images (64x64 RGB by default).

    >>> import random
    >>> from wordsworlds.world.scene import random_scene
    >>> from wordsworlds.world.draw import draw_scene
    >>> draw_scene(random_scene(random.Random(0))).size
    (64, 64)
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .scene import Scene

IMAGE_SIZE = 64
BACKGROUND = (244, 242, 236)
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
# Centres as fractions of the side; far enough apart that two large shapes never touch.
CENTRES = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8), "center": (0.5, 0.5)}
RADIUS = {"small": 0.075, "large": 0.14}


def draw_scene(scene: Scene, size: int = IMAGE_SIZE, rng: random.Random | None = None, jitter: float = 0.0) -> Image.Image:
    """Draw a scene. With an rng, centres and radii move by up to `jitter` pixels (x size/64)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    pen = ImageDraw.Draw(image)
    scale = size / IMAGE_SIZE
    for obj in scene.objects:
        cx, cy = (c * size for c in CENTRES[obj.position])
        r = RADIUS[obj.size] * size
        if rng is not None and jitter:
            cx += rng.uniform(-jitter, jitter) * scale
            cy += rng.uniform(-jitter, jitter) * scale
            r += rng.uniform(-jitter, jitter) * scale * 0.5
        colour = RGB[obj.colour]
        if obj.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif obj.shape == "square":
            half = r * 0.9  # a square of the same area as the circle looks the same size
            pen.rectangle((cx - half, cy - half, cx + half, cy + half), fill=colour)
        else:
            pen.polygon([(cx, cy - r * 1.05), (cx - r * 1.05, cy + r * 0.85), (cx + r * 1.05, cy + r * 0.85)], fill=colour)
    return image
