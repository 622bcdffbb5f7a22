"""The next-token painter: a picture written one image token at a time, row by row.

The worlds lane of the two-by-two's next-token column (world/train_painter.py trains it): a
GPT-2 reads the prompt and writes the 8x8 grid of image tokens in raster order; the
miniature Stable Diffusion's own VAE turns the tokens into pixels. Each written token is
final, as each word of a language model is. Given a `prefix` of tokens (a finished
picture's, up to the first cell of a region to repaint) it continues from there: the one
way a left-to-right model can change a picture.

    >>> from wordsworlds.worlds.painter import Painter
    >>> painter = Painter.load(vae)                                  # doctest: +SKIP
    >>> for frame in painter.stream("a large red circle on the left"):  # doctest: +SKIP
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
from ..world.draw import BACKGROUND, IMAGE_SIZE
from ..world.image_tokens import ImageTokenizer
from ..world.train_captions import encode_requests
from ..world.train_painter import LAYOUT_FILE, PAINTER_DIR

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


class Painter:
    def __init__(self, model, tokenizer, image_tokenizer: ImageTokenizer, vae, prompt_length: int, code_offset: int):
        self.model, self.tokenizer, self.image_tokenizer, self.vae = model.eval(), tokenizer, image_tokenizer, vae
        self.prompt_length, self.code_offset = prompt_length, code_offset
        self.background_code = int(self.encode_picture(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND))
                                   .flatten().mode().values)

    @classmethod
    def load(cls, vae, folder: str | Path = PAINTER_DIR) -> "Painter":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        return cls(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                   ImageTokenizer.load(folder), vae, layout["prompt_length"], layout["code_offset"])

    @property
    def length(self) -> int:
        return self.image_tokenizer.length

    @torch.no_grad()
    def encode_picture(self, picture: Image.Image) -> torch.Tensor:
        """A picture's image tokens [1, cells] (the VAE's latents, then the nearest codes)."""
        pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
        latents = self.vae.encode(pixels / 127.5 - 1).latent_dist.mode()
        return self.image_tokenizer.encode(latents)

    @torch.no_grad()
    def canvas(self, codes: list[int | None]) -> Image.Image:
        """The picture so far: written cells decoded, the rest as empty background, faded."""
        filled = torch.tensor([[self.background_code if c is None else c for c in codes]])
        pixels = self.vae.decode(self.image_tokenizer.decode(filled)).sample.clamp(-1, 1)
        array = ((pixels[0] + 1) * 127.5).permute(1, 2, 0).numpy()
        grid, cell = self.image_tokenizer.grid, array.shape[0] // self.image_tokenizer.grid
        for index, code in enumerate(codes):
            if code is None:
                row, col = divmod(index, grid)
                block = array[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell]
                block[:] = block * (1 - UNWRITTEN_SHADE) + 200 * UNWRITTEN_SHADE
        return Image.fromarray(array.round().astype(np.uint8))

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_requests(self.tokenizer, [prompt], self.prompt_length, "the painter")

    @torch.no_grad()
    def stream(self, prompt: str, seed: int = 0, temperature: float = 0.0, prefix: list[int] | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[PaintFrame]:
        """One frame per forward pass (one token); the canvas is decoded at each row's end."""
        prompt = check_prompt(prompt)
        seed = check_seed(seed)
        temperature = check_number("temperature", temperature, float, 0, 5)
        prefix = list(prefix or [])
        if len(prefix) >= self.length:
            raise InputError(f"a prefix of {len(prefix)} tokens leaves nothing to paint (a picture has {self.length})")
        started = time.perf_counter()
        ids, mask = self.encode_prompt(prompt)
        offset = self.code_offset
        inputs = torch.cat([ids, torch.tensor([prefix], dtype=torch.long) + offset], 1)
        attention = torch.cat([mask, torch.ones(1, len(prefix), dtype=torch.long)], 1)
        positions = torch.arange(inputs.shape[1])[None]
        codes: list[int | None] = prefix + [None] * (self.length - len(prefix))
        generator = torch.Generator().manual_seed(seed)
        cache = None
        for index in range(len(prefix), self.length):
            if should_stop():
                return
            out = self.model(inputs, attention_mask=attention, position_ids=positions, past_key_values=cache,
                             use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1, offset:offset + self.image_tokenizer.codes].float()
            probs = logits.softmax(-1)
            if temperature == 0:
                code = int(probs.argmax())
            else:
                code = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
            codes[index] = code
            done = index == self.length - 1
            row_end = (index + 1) % self.image_tokenizer.grid == 0
            yield PaintFrame(index - len(prefix) + 1, list(codes), [index], float(probs[code]),
                             self.canvas(codes) if row_end or done else None, time.perf_counter() - started, done)
            inputs = torch.tensor([[code + offset]])
            attention = torch.cat([attention, torch.ones(1, 1, dtype=torch.long)], 1)
            positions = positions[:, -1:] + 1
