"""Janus-Pro as the next-token painter of the GPU presets: a real autoregressive image model.

Janus-Pro (DeepSeek, 2025) writes a 384x384 picture as 24x24 = 576 tokens of a VQ image tokenizer,
one at a time in raster order, with classifier-free guidance (the prompt, and the prompt with its
words padded away, in one batch of two). transformers loads it in its own format
(`JanusForConditionalGeneration`, `JanusProcessor`).

`JanusForConditionalGeneration.generate(generation_mode="image")` returns only the finished
tokens: it has no per-token hook and cannot continue from a prefix of image tokens. The lane
needs both (each token as it is written, with its probability; a repaint that keeps the tokens
before a region), so this module runs the same loop itself, from the model's own parts: the
language model with a key/value cache, `generation_head`, `prepare_embeddings_for_image_generation`
and the VQ decoder. A test checks that, greedy, it writes what `generate` writes.

    >>> painter = engines.load_painter(get_preset("sd15"))             # doctest: +SKIP
    >>> *_, last = painter.stream("a red fox in the snow", seed=0)     # doctest: +SKIP
    >>> last.picture.size                                              # doctest: +SKIP
    (384, 384)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, check_number, check_prompt, check_seed
from .painter import PaintFrame

MAX_PROMPT_TOKENS = 512  # Janus-Pro was trained on prompts far shorter; the cache holds prompt + picture
UNWRITTEN_GREY = 200  # not-yet-written cells: their tokens mean nothing yet, so they show as flat grey


class JanusPainter:
    """A Janus model and its processor, one request at a time (each keeps its own key/value cache)."""

    def __init__(self, model, processor, report=None, guidance_scale: float = 5.0):
        self.model, self.processor, self.report = model.eval(), processor, report
        self.guidance_scale = guidance_scale  # Janus-Pro's published default
        config = model.generation_config
        self.bos_id, self.pad_id = config.bos_token_id, config.pad_token_id
        self.boi_id = config.generation_kwargs["boi_token_id"]
        vq = model.config.vq_config
        self.length = model.config.vision_config.num_image_tokens
        self.grid = int(round(self.length ** 0.5))
        self.picture_size = self.grid * 2 ** (len(vq.channel_multiplier) - 1)
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt as Janus reads it for a picture: its chat template, then <begin_of_image>."""
        prompt = check_prompt(prompt)
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=text, generation_mode="image", return_tensors="pt")
        if inputs.input_ids.shape[1] > MAX_PROMPT_TOKENS:
            raise InputError(f"the prompt is {inputs.input_ids.shape[1]} tokens long for Janus; "
                             f"it reads at most {MAX_PROMPT_TOKENS}")
        return inputs.input_ids, inputs.attention_mask

    @torch.no_grad()
    def canvases(self, codes: list[list[int | None]]) -> list[Image.Image]:
        """The pictures so far: written cells decoded by the VQ decoder, the rest flat grey."""
        if not codes:
            return []
        filled = torch.tensor([[0 if c is None else c for c in row] for row in codes], device=self.device)
        pixels = self.model.decode_image_tokens(filled).float().clamp(-1, 1)  # [batch, height, width, 3]
        arrays = ((pixels + 1) * 127.5).cpu().numpy()
        cell = arrays.shape[1] // self.grid
        pictures = []
        for array, row_codes in zip(arrays, codes):
            for index, code in enumerate(row_codes):
                if code is None:
                    row, col = divmod(index, self.grid)
                    array[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = UNWRITTEN_GREY
            pictures.append(Image.fromarray(array.round().astype(np.uint8)))
        return pictures

    def stream(self, prompt: str, seed: int = 0, temperature: float = 1.0, prefix: list[int] | None = None,
               should_stop: Callable[[], bool] = lambda: False, line_updates: bool = False,
               skip_stale: bool = False) -> Iterator[PaintFrame]:
        """One frame per token (Janus-Pro samples at temperature 1; 0 is greedy), the canvas decoded at
        the end of every row. `prefix`: image tokens to keep, written first without sampling (a repaint).
        `line_updates` and `skip_stale` are taken as `Painter.stream` takes them and change nothing here: each
        request runs at once, alone, so there is no line to report and every frame is fresh."""
        prompt = check_prompt(prompt)
        seed = check_seed(seed)
        temperature = check_number("temperature", temperature, float, 0, 5)
        prefix = [check_number("an image token", c, int, 0, self.model.config.vq_config.num_embeddings - 1)
                  for c in (prefix or [])]
        if len(prefix) >= self.length:
            raise InputError(f"a prefix of {len(prefix)} tokens leaves nothing to paint (a picture has {self.length})")
        ids, mask = self.encode_prompt(prompt)
        with self._lock:
            self._running += 1
        try:
            yield from self._paint(ids, mask, seed, temperature, prefix, should_stop)
        finally:
            with self._lock:
                self._running -= 1

    @torch.no_grad()
    def _paint(self, ids, mask, seed, temperature, prefix, should_stop) -> Iterator[PaintFrame]:
        from transformers import DynamicCache

        started = time.perf_counter()
        generator = torch.Generator(self.device).manual_seed(seed)
        # Row 0 conditional, row 1 unconditional: every prompt token but <bos> and <begin_of_image> padded away.
        ids = ids.to(self.device).repeat(2, 1)
        keep = (ids[1] == self.bos_id) | (ids[1] == self.boi_id)
        ids[1] = torch.where(keep, ids[1], torch.full_like(ids[1], self.pad_id))
        mask = mask.to(self.device).repeat(2, 1)
        cache = DynamicCache(config=self.model.config.text_config)
        embeds = self.model.get_input_embeddings()(ids)
        if prefix:
            written = torch.tensor(prefix, device=self.device)[None].repeat(2, 1)
            embeds = torch.cat([embeds, self.model.prepare_embeddings_for_image_generation(written)], 1)
        codes: list[int | None] = prefix + [None] * (self.length - len(prefix))
        for index in range(len(prefix), self.length):
            if should_stop():
                return
            total = cache.get_seq_length() + embeds.shape[1]  # the mask covers the cache and the new positions
            mask = torch.cat([mask, mask.new_ones(2, total - mask.shape[1])], 1)
            hidden = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                                     past_key_values=cache, use_cache=True).last_hidden_state
            scores = self.model.model.generation_head(hidden[:, -1]).float()
            scores = scores[1] + (scores[0] - scores[1]) * self.guidance_scale  # classifier-free guidance
            if temperature == 0:
                code = int(scores.argmax())
                probability = float(scores.softmax(-1)[code])
            else:
                probs = (scores / temperature).softmax(-1)
                code = int(torch.multinomial(probs, 1, generator=generator))
                probability = float(probs[code])
            codes[index] = code
            embeds = self.model.prepare_embeddings_for_image_generation(
                torch.tensor([[code], [code]], device=self.device))
            done = index == self.length - 1
            frame = PaintFrame(index - len(prefix) + 1, list(codes), [index], probability, None,
                               time.perf_counter() - started, done)
            if done or (index + 1) % self.grid == 0:
                frame.picture = self.canvases([codes])[0]
            yield frame
