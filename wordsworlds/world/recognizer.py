"""The shapes-world recognizer: reads an image back into a scene (the tiny preset's describer).

A small convolutional network with one classifier per position: each of the five places
on the canvas is either empty or holds one of 36 objects (3 shapes x 6 colours x 2 sizes).
Trained on freshly drawn scenes, with blur and noise so that it also reads the softer
images the diffusion model paints.

    >>> from wordsworlds.world.recognizer import Recognizer
    >>> recognizer = Recognizer.load()          # the shipped weights
    >>> scene = recognizer.read([image])[0]     # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .draw import IMAGE_SIZE
from .scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, WorldObject

RECOGNIZER_DIR = Path(__file__).parent / "recognizer"
# Slot class 0 is "empty"; classes 1.. are every (shape, colour, size).
OBJECT_CLASSES = list(itertools.product(SHAPES, COLOURS, SIZES))
NUM_CLASSES = 1 + len(OBJECT_CLASSES)


def scene_to_labels(scene: Scene) -> list[int]:
    labels = [0] * len(POSITIONS)
    for o in scene.objects:
        labels[POSITIONS.index(o.position)] = 1 + OBJECT_CLASSES.index((o.shape, o.colour, o.size))
    return labels


def labels_to_scene(labels) -> Scene | None:
    objects = []
    for position, label in zip(POSITIONS, labels):
        if label:
            shape, colour, size = OBJECT_CLASSES[int(label) - 1]
            objects.append(WorldObject(position, shape, colour, size))
    return Scene(tuple(objects)) if 0 < len(objects) <= 3 else None


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

        self.features = nn.Sequential(
            block(3, width), block(width, width * 2), block(width * 2, width * 4), block(width * 4, width * 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 4 * 16, 256), nn.ReLU(), nn.Linear(256, len(POSITIONS) * NUM_CLASSES)
        )
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).view(-1, len(POSITIONS), NUM_CLASSES)


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
        """(labels, confidences), each of shape (N, 5)."""
        device = next(self.net.parameters()).device
        probs = self.net(images_to_tensor(images).to(device)).softmax(-1)
        confidence, labels = probs.max(-1)
        return labels.cpu().numpy(), confidence.cpu().numpy()

    def read(self, images) -> list[Scene | None]:
        """The scene each image shows; None where it shows no valid scene (empty or >3 objects)."""
        labels, _ = self.read_labels(images)
        return [labels_to_scene(row) for row in labels]
