"""Drawing storybook-world scenes as images (64x64 RGB by default).

Each kind of thing is a few PIL primitives around a centre and a radius, drawn at four times
the size and scaled down, so edges are smooth at 64x64. Details that say what a thing is (a
cat's pointed ears, a dog's hanging ones, a house's roof) are drawn in fixed colours; the
object's colour fills its main part. A dark outline keeps every object readable on every
background.

    >>> import random
    >>> from wordsworlds.world.scene import random_scene
    >>> from wordsworlds.world.draw import draw_scene
    >>> draw_scene(random_scene(random.Random(0))).size
    (64, 64)
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .scene import Scene, WorldObject, sky_and_ground

IMAGE_SIZE = 64
SUPERSAMPLE = 4
BACKGROUND = (244, 242, 236)  # the empty canvas of the next-token painter before it has drawn anything
RGB = {
    "red": (220, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (245, 210, 30),
    "green": (50, 175, 60),
    "blue": (40, 80, 225),
    "purple": (145, 55, 185),
    "white": (250, 250, 250),
    "brown": (140, 85, 40),
}
# Skies: (colour at the top, colour at the horizon); grounds start at HORIZON, and take on the
# sky's light: darker at night, warmer at sunset.
SKY_RGB = {
    "day": ((110, 175, 235), (190, 222, 246)),
    "night": ((10, 15, 45), (40, 50, 100)),
    "sunset": ((235, 95, 70), (255, 195, 110)),
    "space": ((0, 0, 6), (10, 6, 26)),
}
GROUND_RGB = {"sea": (25, 90, 170), "grass": (75, 160, 60), "snow": (238, 242, 248)}
LIGHT = {"day": lambda c: c, "night": lambda c: tuple(round(v * 0.45) for v in c),
         "sunset": lambda c: tuple(round(v * 0.8 + w * 0.2) for v, w in zip(c, (255, 140, 60)))}
HORIZON = 0.62
OUTLINE = (30, 25, 35)
DARK = (30, 25, 35)
# Centres as fractions of the side; far enough apart that two large things never touch.
CENTRES = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8), "center": (0.5, 0.5)}
RADIUS = {"small": 0.1, "large": 0.15}
# Two or three of a thing share their place: each drawn smaller, around the place's centre,
# on a diagonal or in a triangle so the group reaches no further towards the other places
# (which lie straight left, right, above or below) than one thing would. At 64x64 a small one
# of three is 7 pixels across: the smallest the recognizer tells apart (kinds misread most there).
GROUPS = {1: ((0.0, 0.0, 1.0),), 2: ((-0.45, -0.45, 0.7), (0.45, 0.45, 0.7)),
          3: ((-0.55, 0.45, 0.62), (0.55, 0.45, 0.62), (0.0, -0.5, 0.62))}


def draw_background(pen: ImageDraw.ImageDraw, background: str, size: int) -> None:
    sky, ground = sky_and_ground(background)
    top, horizon = SKY_RGB[sky]
    sky_end = int(size * HORIZON) if ground else size
    for y in range(sky_end):  # a vertical gradient from the top of the sky to the horizon
        t = y / max(1, sky_end - 1)
        pen.line((0, y, size, y), fill=tuple(round(a + (b - a) * t) for a, b in zip(top, horizon)))
    if ground:
        pen.rectangle((0, sky_end, size, size), fill=LIGHT[sky](GROUND_RGB[ground]))


class Pen:
    """Draws one thing around (cx, cy) with radius r; `c` is its colour; coordinates in units of r."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, colour):
        self.draw, self.cx, self.cy, self.r, self.c = draw, cx, cy, r, colour
        self.width = max(1, round(r * 0.09))

    def at(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.r, self.cy + y * self.r

    def ellipse(self, x, y, rx, ry, fill=None):
        (x0, y0), (x1, y1) = self.at(x - rx, y - ry), self.at(x + rx, y + ry)
        self.draw.ellipse((x0, y0, x1, y1), fill=fill or self.c, outline=OUTLINE, width=self.width)

    def circle(self, x, y, radius, fill=None):
        self.ellipse(x, y, radius, radius, fill)

    def polygon(self, points, fill=None):
        self.draw.polygon([self.at(x, y) for x, y in points], fill=fill or self.c, outline=OUTLINE, width=self.width)

    def rect(self, x0, y0, x1, y1, fill=None):
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def dot(self, x, y, radius=0.1, fill=DARK):
        (x0, y0), (x1, y1) = self.at(x - radius, y - radius), self.at(x + radius, y + radius)
        self.draw.ellipse((x0, y0, x1, y1), fill=fill)


def _star_points(points: int, outer: float, inner: float, turn: float = -math.pi / 2):
    return [((outer if i % 2 == 0 else inner) * math.cos(turn + i * math.pi / points),
             (outer if i % 2 == 0 else inner) * math.sin(turn + i * math.pi / points)) for i in range(points * 2)]


def _sun(p: Pen):
    p.polygon(_star_points(12, 1.0, 0.62))
    p.circle(0, 0, 0.6)


def _moon(p: Pen):
    outer = [(math.cos(a) * 0.95, math.sin(a) * 0.95) for a in (math.radians(d) for d in range(60, 301, 15))]
    inner = [(0.45 + math.cos(a) * 0.75, -0.05 + math.sin(a) * 0.75) for a in (math.radians(d) for d in range(245, 114, -15))]
    p.polygon(outer + inner)


def _star(p: Pen):
    p.polygon(_star_points(5, 1.05, 0.45))


def _cloud(p: Pen):
    p.ellipse(0, 0.2, 0.95, 0.45)
    p.circle(-0.35, -0.05, 0.4)
    p.circle(0.25, -0.2, 0.5)
    p.draw.rectangle((*p.at(-0.75, 0.05), *p.at(0.75, 0.45)), fill=p.c)  # hide the inner outlines


def _tree(p: Pen):
    p.rect(-0.15, 0.45, 0.15, 1.0, fill=(100, 60, 30))
    p.polygon([(0, -1.0), (-0.65, 0.05), (0.65, 0.05)])
    p.polygon([(0, -0.55), (-0.85, 0.6), (0.85, 0.6)])


def _flower(p: Pen):
    p.draw.line((*p.at(0, 0.2), *p.at(0, 1.0)), fill=(40, 120, 40), width=p.width * 2)
    for k in range(5):
        a = -math.pi / 2 + k * 2 * math.pi / 5
        p.circle(0.42 * math.cos(a), -0.2 + 0.42 * math.sin(a), 0.32)
    p.circle(0, -0.2, 0.22, fill=(250, 220, 60) if p.c != RGB["yellow"] else (140, 85, 40))


def _house(p: Pen):
    p.rect(-0.7, -0.15, 0.7, 0.9)
    p.polygon([(0, -0.95), (-0.95, -0.15), (0.95, -0.15)], fill=(120, 45, 35))
    p.rect(-0.18, 0.35, 0.18, 0.9, fill=DARK)


def _car(p: Pen):
    p.polygon([(-0.5, -0.1), (-0.3, -0.55), (0.35, -0.55), (0.55, -0.1)])
    p.rect(-1.0, -0.15, 1.0, 0.4)
    p.circle(-0.5, 0.45, 0.24, fill=DARK)
    p.circle(0.5, 0.45, 0.24, fill=DARK)


def _boat(p: Pen):
    p.draw.line((*p.at(0, -1.0), *p.at(0, 0.25)), fill=DARK, width=p.width)
    p.polygon([(0.08, -0.95), (0.08, 0.15), (0.75, 0.15)], fill=(240, 240, 240))
    p.polygon([(-1.0, 0.25), (1.0, 0.25), (0.6, 0.75), (-0.6, 0.75)])


def _fish(p: Pen):
    p.polygon([(0.45, 0), (1.0, -0.5), (1.0, 0.5)])
    p.ellipse(-0.15, 0, 0.7, 0.45)
    p.dot(-0.5, -0.1, 0.1)


def _bird(p: Pen):
    p.polygon([(0.5, 0.0), (1.0, -0.3), (1.0, 0.3)])  # tail
    p.ellipse(0, 0.05, 0.6, 0.45)
    p.circle(-0.55, -0.35, 0.3)
    p.polygon([(-0.8, -0.4), (-1.05, -0.3), (-0.8, -0.22)], fill=(245, 160, 30))  # beak
    p.polygon([(-0.1, -0.05), (0.45, -0.75), (0.35, 0.05)])  # wing up
    p.dot(-0.6, -0.4, 0.07)


def _cat(p: Pen):
    p.polygon([(-0.75, -0.2), (-0.65, -1.0), (-0.15, -0.55)])
    p.polygon([(0.75, -0.2), (0.65, -1.0), (0.15, -0.55)])
    p.circle(0, 0.1, 0.75)
    p.dot(-0.3, 0.0, 0.11)
    p.dot(0.3, 0.0, 0.11)
    p.dot(0, 0.3, 0.08, fill=(240, 120, 140))


def _dog(p: Pen):
    p.circle(0, 0.05, 0.7)
    p.ellipse(-0.78, 0.15, 0.25, 0.55, fill=(90, 55, 30))  # ears hanging down
    p.ellipse(0.78, 0.15, 0.25, 0.55, fill=(90, 55, 30))
    p.ellipse(0, 0.42, 0.32, 0.24, fill=(245, 235, 220))  # muzzle
    p.dot(0, 0.32, 0.1)
    p.dot(-0.28, -0.1, 0.1)
    p.dot(0.28, -0.1, 0.1)


def _person(p: Pen):
    p.polygon([(0, -0.45), (-0.6, 0.65), (0.6, 0.65)])  # a dress or a coat in the colour
    p.draw.line((*p.at(-0.25, 0.65), *p.at(-0.25, 1.0)), fill=DARK, width=p.width * 2)
    p.draw.line((*p.at(0.25, 0.65), *p.at(0.25, 1.0)), fill=DARK, width=p.width * 2)
    p.circle(0, -0.65, 0.33, fill=(240, 200, 160))


def _snowman(p: Pen):
    p.circle(0, 0.45, 0.55)
    p.circle(0, -0.4, 0.38)
    p.dot(-0.13, -0.48, 0.07)
    p.dot(0.13, -0.48, 0.07)
    p.polygon([(0, -0.38), (0.35, -0.32), (0, -0.28)], fill=(245, 130, 20))  # a carrot nose
    p.rect(-0.32, -1.0, 0.32, -0.72, fill=DARK)  # a hat


def _rocket(p: Pen):
    p.polygon([(-0.65, 0.5), (-0.3, 0.1), (-0.3, 0.8)], fill=DARK)
    p.polygon([(0.65, 0.5), (0.3, 0.1), (0.3, 0.8)], fill=DARK)
    p.polygon([(0, -1.0), (0.35, -0.45), (0.35, 0.8), (-0.35, 0.8), (-0.35, -0.45)])
    p.circle(0, -0.15, 0.17, fill=(170, 220, 250))
    p.polygon([(-0.2, 0.8), (0.2, 0.8), (0, 1.05)], fill=(250, 150, 30))  # flame


def _heart(p: Pen):
    points = [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
               - math.cos(4 * t)) / 17 - 0.05) for t in (k * 2 * math.pi / 40 for k in range(40))]
    p.polygon(points)


def _mountain(p: Pen):
    p.polygon([(0, -0.95), (-1.05, 0.8), (1.05, 0.8)])
    cap = (200, 205, 215) if p.c == RGB["white"] else (250, 250, 250)
    p.polygon([(0, -0.95), (-0.36, -0.35), (-0.12, -0.45), (0.05, -0.3), (0.36, -0.35)], fill=cap)


DRAWERS = {"sun": _sun, "moon": _moon, "star": _star, "cloud": _cloud, "tree": _tree, "flower": _flower,
           "house": _house, "car": _car, "boat": _boat, "fish": _fish, "bird": _bird, "cat": _cat, "dog": _dog,
           "person": _person, "snowman": _snowman, "rocket": _rocket, "heart": _heart, "mountain": _mountain}


def draw_object(pen: ImageDraw.ImageDraw, obj: WorldObject, size: int, rng: random.Random | None = None,
                jitter: float = 0.0) -> None:
    """One object (one to three of a thing) at its place; `size` is the side of the canvas drawn on."""
    cx, cy = (c * size for c in CENTRES[obj.position])
    r = RADIUS[obj.size] * size
    scale = size / IMAGE_SIZE
    if rng is not None and jitter:
        cx += rng.uniform(-jitter, jitter) * scale
        cy += rng.uniform(-jitter, jitter) * scale
        r += rng.uniform(-jitter, jitter) * scale * 0.5
    for dx, dy, shrink in GROUPS[obj.count]:
        DRAWERS[obj.kind](Pen(pen, cx + dx * r, cy + dy * r, r * shrink, RGB[obj.colour]))


def draw_backdrop(background: str, size: int = IMAGE_SIZE) -> Image.Image:
    """The background alone, as draw_scene draws it under the things."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big))
    draw_background(ImageDraw.Draw(image), background, big)
    return image.resize((size, size), Image.LANCZOS)


def draw_scene(scene: Scene, size: int = IMAGE_SIZE, rng: random.Random | None = None, jitter: float = 0.0) -> Image.Image:
    """Draw a scene. With an rng, centres and radii move by up to `jitter` pixels (x size/64).

    A scene with no background (a request that named none) is drawn on the day sky."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big))
    pen = ImageDraw.Draw(image)
    draw_background(pen, scene.background or "day", big)
    for obj in scene.objects:
        draw_object(pen, obj, big, rng, jitter)
    return image.resize((size, size), Image.LANCZOS)
