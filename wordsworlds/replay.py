"""At the speaker's pace: a finished two-by-two run, kept, and shown at any step of its four lanes.

A `Recording` keeps what each lane made and in which order: the caption writers' final frames
(each position's word, the pass that committed it, the words it was chosen among), the
painter's image tokens (written in raster order, one per pass), and the diffusion model's
`RenderTrace` (every step's x_t, x0 guess and cross-attention maps). `view_at(step)` rebuilds
all four lanes after `step` of their own steps (a word, an unmasking pass, an image token, a
denoising step), with what changed at that step, so a scrubber moves them together, and a
replay can run slower than the models did. Nothing is computed again but pictures: x_t and
x0 are decoded from the kept latents when first asked for.

`RunStore` keeps the last runs (bounded in count and bytes) under ids that cannot be guessed;
a replay of a run it no longer keeps is told so.

    >>> store = RunStore()
    >>> run_id = store.add(recording)                          # doctest: +SKIP
    >>> view = store.get(run_id).view_at(5, decode, canvases)   # doctest: +SKIP
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .errors import InputError, check_number
from .words.captions import END, CaptionFrame
from .worlds.diffusion import RenderOptions, RenderResult

NEW = "this step"  # the category of what a step wrote, in a words lane's view
CHANGE_COLOUR = np.array([230, 0, 160], dtype=np.float32)  # "what changed" on a picture
ATTENTION_COLOUR = np.array([255, 140, 0], dtype=np.float32)  # where a word's attention falls


@dataclass
class ReplayView:
    """All four lanes after `step` of their own steps."""

    step: int
    words_next_token: list[tuple[str, str | None]]  # (word, NEW or None) per position written so far
    words_masked_diffusion: list[tuple[str, str | None]]  # masked positions as MASKED
    worlds_next_token: Image.Image  # the canvas, the cell written at this step outlined
    worlds_denoising: Image.Image  # the x0 guess, what changed since the last step tinted
    noisy: Image.Image  # x_t, the noisy latent the U-Net saw at this step, decoded to pixels
    attention: Image.Image | None  # the chosen word's cross-attention over the x0 guess
    lane_steps: dict[str, int]  # how far each lane is at this step (a lane that finished stays at its end)


MASKED = "▢"


@dataclass
class Recording:
    """One two-by-two run, as its lanes finished it."""

    prompt: str
    options: RenderOptions
    captions: dict[str, CaptionFrame]  # "next_token" / "masked_diffusion": each writer's last frame
    codes: list[int]  # the painter's image tokens, in the order written (raster)
    render: RenderResult  # with its trace (options.record)
    _pictures: dict = field(default_factory=dict, repr=False)  # decoded pictures, by (kind, step)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tokens(self) -> list[str]:
        return self.render.trace.tokens

    @property
    def lengths(self) -> dict[str, int]:
        """Each lane's own steps."""
        return {"words_next_token": self.captions["next_token"].step,
                "words_masked_diffusion": self.captions["masked_diffusion"].step,
                "worlds_next_token": len(self.codes),
                "worlds_denoising": len(self.render.trace.noisy)}

    @property
    def steps(self) -> int:
        return max(self.lengths.values())

    @property
    def nbytes(self) -> int:
        trace = self.render.trace
        tensors = [*trace.noisy, *trace.x0, *(a for a in trace.attention if a is not None)]
        return sum(t.nbytes for t in tensors) + 3 * self.render.image.width * self.render.image.height

    def check_step(self, step) -> int:
        return check_number("step", step, int, 0, self.steps)

    def check_token(self, token) -> int | None:
        """A prompt token's index for the attention view (None: no attention view)."""
        if token in (None, ""):
            return None
        if not self.tokens:
            raise InputError("this run kept no attention maps")
        if isinstance(token, str) and not token.strip().isdigit():
            if token.strip().lower() not in self.tokens:
                raise InputError(f"token {token[:40]!r} is not in the prompt; its tokens are {', '.join(self.tokens[:20])}")
            return self.tokens.index(token.strip().lower())
        if isinstance(token, str):
            token = int(token.strip()[:12])
        return check_number("token", token, int, 0, len(self.tokens) - 1)

    def view_at(self, step, decode: Callable[[torch.Tensor], list[Image.Image]],
                canvases: Callable[[list[list[int | None]]], list[Image.Image]], token=None) -> ReplayView:
        """Every lane after `step` of its own steps (0: before the first). `decode` turns latents (k, c, h, w)
        into pictures (the diffusion model's VAE); `canvases` turns image tokens into the painter's canvases."""
        step = self.check_step(step)
        token = self.check_token(token)
        lanes = {lane: min(step, length) for lane, length in self.lengths.items()}
        denoise = lanes["worlds_denoising"]
        x0 = self._decoded("x0", denoise, decode)
        noisy = self._decoded("noisy", denoise, decode)
        previous = self._decoded("x0", denoise - 1, decode) if denoise > 1 else None
        attention = None
        if token is not None:
            maps = self.render.trace.attention[max(denoise, 1) - 1]
            attention = overlay(x0, torch.from_numpy(maps[token]), ATTENTION_COLOUR) if maps is not None else None
        return ReplayView(
            step,
            words_at(self.captions["next_token"], lanes["words_next_token"]),
            words_at(self.captions["masked_diffusion"], lanes["words_masked_diffusion"]),
            self._canvas(lanes["worlds_next_token"], canvases),
            changed(x0, previous) if denoise else x0,
            noisy, attention, lanes,
        )

    def _decoded(self, kind: str, step: int, decode) -> Image.Image:
        """Step `step`'s x0 guess or x_t as a picture (decoded once); step 0: the starting noise, and no guess yet."""
        trace = self.render.trace
        index = max(step, 1) - 1
        key = (kind, step)
        with self._lock:
            if key not in self._pictures:
                if not step and kind == "x0":
                    self._pictures[key] = Image.new("RGB", self.render.image.size, (128, 128, 128))
                else:
                    latent = (trace.x0 if kind == "x0" else trace.noisy)[index]
                    self._pictures[key] = decode(torch.from_numpy(latent)[None].float())[0]
            return self._pictures[key]

    def _canvas(self, step: int, canvases) -> Image.Image:
        with self._lock:
            key = ("canvas", step)
            if key not in self._pictures:
                codes = self.codes[:step] + [None] * (len(self.codes) - step)
                picture = canvases([codes])[0]
                if step:
                    grid = int(round(len(self.codes) ** 0.5))
                    row, col = divmod(step - 1, grid)
                    cell = picture.width / grid
                    ImageDraw.Draw(picture).rectangle(
                        [col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1],
                        outline=tuple(int(c) for c in CHANGE_COLOUR), width=max(1, picture.width // 64))
                self._pictures[key] = picture
            return self._pictures[key]


def words_at(frame: CaptionFrame, step: int) -> list[tuple[str, str | None]]:
    """A caption writer's words after `step` passes, up to the caption's end as written by then: what the
    pass at `step` committed marked NEW, earlier and template words plain, positions still masked as MASKED
    (a left-to-right writer has nothing past its last word)."""
    chips = []
    for word, made, fixed in zip(frame.words, frame.passes, frame.fixed):
        written = fixed or (made is not None and made <= step)
        if written and word == END:
            break
        if written:
            chips.append((word, NEW if made == step and not fixed else None))
        elif frame.process == "next_token":
            break
        else:
            chips.append((MASKED, None))
    return chips


def changed(picture: Image.Image, before: Image.Image | None) -> Image.Image:
    """The picture, each pixel tinted by how much it changed since `before` (all of it at the first step)."""
    if before is None:
        return picture
    now, then = np.asarray(picture, np.float32), np.asarray(before, np.float32)
    amount = np.abs(now - then).max(-1)
    return overlay(picture, torch.from_numpy(amount), CHANGE_COLOUR, floor=8.0)


def overlay(picture: Image.Image, heat: torch.Tensor, colour: np.ndarray, floor: float = 0.0) -> Image.Image:
    """`heat` (any h, w) upsampled to the picture and laid over it: 0 leaves a pixel, the step's maximum
    paints it `colour`. `floor`: heat below it counts as none (a change under 8 grey levels is noise)."""
    base = np.asarray(picture.convert("RGB"), np.float32)
    heat = heat.float()[None, None]
    heat = F.interpolate(heat, size=base.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = np.clip(heat - floor, 0, None)
    low, high = heat.min(), heat.max()
    weight = (heat - low) / (high - low) if high - low > 1e-8 else np.zeros_like(heat)
    weight = (0.8 * weight)[..., None]
    dimmed = base * 0.6 + 255 * 0.4  # the picture faded, so the overlay reads on any colour
    return Image.fromarray((dimmed * (1 - weight) + colour * weight).round().astype(np.uint8))


class RunStore:
    """The last runs, by id, for replays and branches: at most `max_runs`, at most `max_bytes` of latents.
    Thread-safe; the oldest run leaves first."""

    def __init__(self, max_runs: int = 256, max_bytes: int = 256 << 20):
        self.max_runs, self.max_bytes = max_runs, max_bytes
        self._runs: OrderedDict[str, Recording] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, recording: Recording) -> str:
        run_id = secrets.token_hex(8)
        with self._lock:
            self._runs[run_id] = recording
            self._bytes += recording.nbytes
            while len(self._runs) > self.max_runs or (self._bytes > self.max_bytes and len(self._runs) > 1):
                _, old = self._runs.popitem(last=False)
                self._bytes -= old.nbytes
        return run_id

    def get(self, run_id) -> Recording:
        if not isinstance(run_id, str) or not run_id.strip():
            raise InputError("no run to replay yet: press Run all four first")
        with self._lock:
            recording = self._runs.get(run_id.strip())
            if recording is not None:
                self._runs.move_to_end(run_id.strip())
        if recording is None:
            raise InputError(f"run {run_id[:40]!r} is no longer kept (the server keeps the last {self.max_runs} "
                             "runs); run the prompt again")
        return recording

    def __len__(self) -> int:
        return len(self._runs)
