"""The next-token painter: a picture written one image token at a time, row by row.

The worlds lane of the two-by-two's next-token column (world/train_painter.py trains it): a
GPT-2 reads the prompt and writes the 8x8 grid of image tokens in raster order; the
miniature Stable Diffusion's own VAE turns the tokens into pixels. Each written token is
final, as each word of a language model is. Given a `prefix` of tokens (a finished
picture's, up to the first cell of a region to repaint) it continues from there: the one
way a left-to-right model can change a picture.

    >>> from wordsworlds.worlds.painter import Painter
    >>> painter = Painter.load(get_preset("tiny"))                   # doctest: +SKIP
    >>> for frame in painter.stream("a large red cat on the left"):  # doctest: +SKIP
    ...     print(frame.step, frame.picture is not None)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, check_number, check_prompt, check_seed
from ..models import load_painter_model
from ..presets import Preset
from ..serving import RunJob, run_loop
from ..world.draw import BACKGROUND, IMAGE_SIZE
from ..world.image_tokens import ImageTokenizer
from ..world.train_captions import encode_requests
from ..world.train_painter import LAYOUT_FILE

UNWRITTEN_SHADE = 0.55  # how far not-yet-written cells fade to grey on the canvas


@dataclass
class PaintFrame:
    step: int  # forward passes so far
    codes: list[int | None]  # one per cell in raster order; None: not yet written
    written: list[int] = field(default_factory=list)  # cells written by this pass
    probability: float | None = None  # of the token just written
    picture: Image.Image | None = None  # the canvas, decoded at the end of every row
    seconds: float = 0.0
    done: bool = False
    picture_due: bool = False  # this frame ends a row: its canvas is decoded (Painter.add_pictures)


class Painter:
    """The trained painter; batched, one RunLoop per model serves every request."""

    def __init__(self, model, tokenizer, image_tokenizer: ImageTokenizer, vae, prompt_length: int, code_offset: int,
                 report=None, batching: bool = False):
        self.model, self.tokenizer, self.image_tokenizer, self.vae = model.eval(), tokenizer, image_tokenizer, vae
        self.prompt_length, self.code_offset, self.report = prompt_length, code_offset, report
        self.background_code = int(self.encode_picture(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND))
                                   .flatten().mode().values)
        self.loop = run_loop(self, "painter") if batching else None  # serving.RunLoop

    @classmethod
    def load(cls, preset: Preset) -> "Painter":
        """The preset's painter (loaded once per process), batched unless the preset says not.
        (engines.load_painter also serves the presets whose painter is a Janus model.)"""
        parts = load_painter_model(preset)
        return cls(parts.model, parts.tokenizer, parts.image_tokenizer, parts.vae, parts.prompt_length,
                   parts.code_offset, parts.report, batching=preset.batched)

    @classmethod
    def from_pretrained(cls, folder: str | Path, vae) -> "Painter":
        """A painter from a folder that train_painter wrote, drawing with `vae`, alone."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        return cls(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                   ImageTokenizer.load(folder), vae, layout["prompt_length"], layout["code_offset"])

    @property
    def running(self) -> int:
        return self.loop.load[0] if self.loop is not None else 0

    @property
    def length(self) -> int:
        return self.image_tokenizer.length

    @property
    def grid(self) -> int:
        """Cells per side: the picture is written grid x grid tokens, row by row."""
        return self.image_tokenizer.grid

    @property
    def picture_size(self) -> int:
        return self.vae.config.sample_size

    @torch.no_grad()
    def encode_picture(self, picture: Image.Image) -> torch.Tensor:
        """A picture's image tokens [1, cells] (the VAE's latents, then their codes)."""
        pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
        latents = self.vae.encode(pixels / 127.5 - 1).latent_dist.mode()
        return self.image_tokenizer.encode(latents)

    @torch.no_grad()
    def canvases(self, codes: list[list[int | None]]) -> list[Image.Image]:
        """The pictures so far: written cells decoded, the rest as empty background, faded."""
        if not codes:
            return []
        filled = torch.tensor([[self.background_code if c is None else c for c in row] for row in codes])
        pixels = self.vae.decode(self.image_tokenizer.decode(filled)).sample.clamp(-1, 1)
        arrays = ((pixels + 1) * 127.5).permute(0, 2, 3, 1).numpy()
        grid, cell = self.image_tokenizer.grid, arrays.shape[1] // self.image_tokenizer.grid
        pictures = []
        for array, row_codes in zip(arrays, codes):
            for index, code in enumerate(row_codes):
                if code is None:
                    row, col = divmod(index, grid)
                    block = array[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell]
                    block[:] = block * (1 - UNWRITTEN_SHADE) + 200 * UNWRITTEN_SHADE
            pictures.append(Image.fromarray(array.round().astype(np.uint8)))
        return pictures

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_requests(self.tokenizer, [prompt], self.prompt_length, "the painter")

    def start(self, prompt: str, seed: int = 0, temperature: float = 0.0,
              prefix: list[int] | None = None) -> "PaintRun":
        """One request's run, checked before any model work."""
        prompt = check_prompt(prompt)
        seed = check_seed(seed)
        temperature = check_number("temperature", temperature, float, 0, 5)
        prefix = list(prefix or [])
        if len(prefix) >= self.length:
            raise InputError(f"a prefix of {len(prefix)} tokens leaves nothing to paint (a picture has {self.length})")
        ids, mask = self.encode_prompt(prompt)
        return PaintRun(self, ids[0], mask[0], prefix, seed, temperature)

    @torch.no_grad()
    def forward(self, runs: list["PaintRun"]) -> torch.Tensor:
        """One forward pass for every run (batched): the logits of each run's next token, [runs, codes].
        Every run has the same layout (prompt, then 64 cells; not-yet-written cells masked out), so a batch
        needs no padding, and no key/value cache: at 104 positions and 0.8M parameters the whole sequence
        costs little more than one position."""
        ids = torch.stack([run.ids for run in runs])
        attention = torch.stack([run.attention for run in runs])
        positions = torch.arange(ids.shape[1])[None].expand(len(runs), -1)
        logits = self.model(ids, attention_mask=attention, position_ids=positions).logits
        rows = torch.tensor([self.prompt_length + run.written - 1 for run in runs])
        picked = logits[torch.arange(len(runs)), rows]
        return picked[:, self.code_offset:self.code_offset + self.image_tokenizer.codes].float()

    @torch.no_grad()
    def add_pictures(self, frames: list[PaintFrame]) -> None:
        """Decode the canvas of every frame that ends a row (or the picture), in one VAE call."""
        due = [f for f in frames if f.picture_due]
        for frame, picture in zip(due, self.canvases([f.codes for f in due])):
            frame.picture = picture

    def stream(self, prompt: str, seed: int = 0, temperature: float = 0.0, prefix: list[int] | None = None,
               should_stop: Callable[[], bool] = lambda: False, line_updates: bool = False,
               skip_stale: bool = False) -> Iterator[PaintFrame]:
        """One frame per forward pass (one token); the canvas is decoded at each row's end. Batched: as
        Captioner.stream."""
        run = self.start(prompt, seed, temperature, prefix)
        if self.loop is not None:
            yield from self.loop.stream(RunJob(run, should_stop), line_updates=line_updates, skip_stale=skip_stale)
            return
        while not run.done and not should_stop():
            frame = run.advance(self.forward([run])[0])
            self.add_pictures([frame])
            yield frame


class PaintRun:
    """One request: its prompt, the cells written so far, its own random generator."""

    def __init__(self, painter: Painter, prompt_ids, prompt_mask, prefix: list[int], seed: int, temperature: float):
        self.painter, self.temperature = painter, temperature
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.codes: list[int | None] = prefix + [None] * (painter.length - len(prefix))
        self.prefix = len(prefix)
        self.generator = torch.Generator().manual_seed(seed)
        self.started = time.perf_counter()
        self.done = False

    @property
    def written(self) -> int:
        return sum(c is not None for c in self.codes)

    @property
    def ids(self) -> torch.Tensor:
        offset, pad = self.painter.code_offset, self.painter.tokenizer.pad_token_id
        return torch.cat([self.prompt_ids, torch.tensor([pad if c is None else c + offset for c in self.codes])])

    @property
    def attention(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, torch.tensor([int(c is not None) for c in self.codes])])

    def advance(self, logits: torch.Tensor) -> PaintFrame:
        """Write the next cell from this run's logits over the codes."""
        probs = logits.softmax(-1)
        if self.temperature == 0:
            code = int(probs.argmax())
        else:
            code = int(torch.multinomial((logits / self.temperature).softmax(-1), 1, generator=self.generator))
        index = self.written
        self.codes[index] = code
        self.done = index == self.painter.length - 1
        frame = PaintFrame(index - self.prefix + 1, list(self.codes), [index], float(probs[code]), None,
                           time.perf_counter() - self.started, self.done)
        frame.picture_due = self.done or (index + 1) % self.painter.grid == 0
        return frame

