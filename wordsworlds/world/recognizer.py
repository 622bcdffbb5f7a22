"""The storybook recognizer: reads an image back into a scene (the tiny preset's describer).

A small convolutional network with one read-out per question: which background, and for each
of the five places, which kind of thing stands there (or nothing), in which colour and size,
and how many of it. Trained on freshly drawn scenes, with blur and noise so that it also
reads the softer images the diffusion model paints.

    >>> from wordsworlds.world.recognizer import Recognizer
    >>> recognizer = Recognizer.load()          # the shipped weights
    >>> scene = recognizer.read([image])[0]     # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .draw import IMAGE_SIZE
from .scene import BACKGROUNDS, COLOURS, COUNTS, KINDS, MAX_OBJECTS, POSITIONS, SIZES, Scene, WorldObject

RECOGNIZER_DIR = Path(__file__).parent / "recognizer"
# The questions asked of every place: kind 0 is "nothing here"; the other answers count only
# where something is.
SLOT_FIELDS = (("kind", (None, *KINDS)), ("colour", COLOURS), ("size", SIZES), ("count", COUNTS))
NUM_LOGITS = len(BACKGROUNDS) + len(POSITIONS) * sum(len(values) for _, values in SLOT_FIELDS)
IGNORE = -100  # cross-entropy's ignore_index: no colour, size or count at an empty place


def scene_to_labels(scene: Scene) -> list[int]:
    """[background, then kind, colour, size, count for each of the five places]."""
    labels = [BACKGROUNDS.index(scene.background or "day")]
    by_place = {o.position: o for o in scene.objects}
    for position in POSITIONS:
        obj = by_place.get(position)
        if obj is None:
            labels += [0] + [IGNORE] * (len(SLOT_FIELDS) - 1)
        else:
            labels += [values.index(getattr(obj, name)) for name, values in SLOT_FIELDS]
    return labels


def labels_to_scene(labels) -> Scene | None:
    labels = [int(v) for v in labels]
    objects = []
    for i, position in enumerate(POSITIONS):
        answers = labels[1 + i * len(SLOT_FIELDS): 1 + (i + 1) * len(SLOT_FIELDS)]
        if answers[0]:
            values = {name: options[answer] for (name, options), answer in zip(SLOT_FIELDS, answers)}
            objects.append(WorldObject(position, **values))
    return Scene(tuple(objects), BACKGROUNDS[labels[0]]) if 0 < len(objects) <= MAX_OBJECTS else None


def split_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    """(N, NUM_LOGITS) -> one (N, options) tensor per question, in scene_to_labels' order."""
    sizes = [len(BACKGROUNDS)] + [len(values) for _ in POSITIONS for _, values in SLOT_FIELDS]
    return list(logits.split(sizes, dim=-1))


def scene_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every question that has an answer."""
    losses = [F.cross_entropy(part, labels[:, i], ignore_index=IGNORE, reduction="sum")
              for i, part in enumerate(split_logits(logits))]
    return torch.stack(losses).sum() / (labels != IGNORE).sum().clamp(min=1)


def images_to_tensor(images) -> torch.Tensor:
    """PIL images (any size) -> float tensor in [-1, 1], NCHW at the world's size."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


class RecognizerNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        # The first layer keeps the full 64x64 resolution: a small thing of a group of three is
        # 7 pixels across, and its kind is in those pixels.
        stem = nn.Sequential(nn.Conv2d(3, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU())
        self.features = nn.Sequential(
            stem, block(width // 2, width), block(width, width * 2), block(width * 2, width * 4), block(width * 4, width * 4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 4 * 16, 384), nn.ReLU(), nn.Linear(384, NUM_LOGITS))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Recognizer:
    """Loads the network and turns images into scenes with per-slot confidences."""

    def __init__(self, net: RecognizerNet):
        self.net = net.eval()

    @classmethod
    def load(cls, folder: str | Path = RECOGNIZER_DIR) -> "Recognizer":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        net = RecognizerNet(width=config["width"])
        net.load_state_dict(load_file(folder / "model.safetensors"))
        return cls(net)

    def to(self, device: str) -> "Recognizer":
        self.net.to(device)
        return self

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"width": self.net.width, "image_size": IMAGE_SIZE}))

    @torch.no_grad()
    def read_labels(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidences), each of shape (N, 21): the answers in scene_to_labels' order."""
        device = next(self.net.parameters()).device
        parts = [part.softmax(-1).max(-1) for part in split_logits(self.net(images_to_tensor(images).to(device)))]
        labels = torch.stack([p.indices for p in parts], dim=1)
        confidence = torch.stack([p.values for p in parts], dim=1)
        return labels.cpu().numpy(), confidence.cpu().numpy()

    def read(self, images) -> list[Scene | None]:
        """The scene each image shows; None where it shows no valid scene (nothing, or more than three objects)."""
        labels, _ = self.read_labels(images)
        return [labels_to_scene(row) for row in labels]
