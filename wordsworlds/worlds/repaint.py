"""Repaint one region of a finished picture: what denoising can do and next-token painting cannot.

Denoising repaints in place: diffusers' `StableDiffusionInpaintPipeline`, built from the
text-to-image pipeline's own parts (`from_pipe`; for a U-Net of other than 4 latent channels, its loop as
`inpaint_plain_unet`); with a plain U-Net it denoises
the whole canvas and, after every step, puts back the original outside the region, noised
to that step's level (Lugmayr et al.'s RePaint idea, without resampling). The pixels outside
the region are then pasted back exactly (diffusers' `apply_overlay`).
A next-token painter can only continue from a prefix: it keeps the tokens before the
region's first cell and writes everything after it again (worlds/painter.py).

    >>> from wordsworlds.worlds.repaint import parse_region
    >>> parse_region("left", 64)
    Region(x=0, y=19, width=26, height=26)
    >>> parse_region("8,8,16,16", 64).cells(8, 8)[:3]
    [9, 10, 17]
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from ..errors import InputError, check_prompt
from ..world.draw import CENTRES, RADIUS
from .layout import hold_kept

REGION_MARGIN = 4  # pixels around the largest thing at a named place


@dataclass(frozen=True)
class Region:
    """A box on the canvas, in pixels."""

    x: int
    y: int
    width: int
    height: int

    def mask(self, size: int) -> Image.Image:
        """White inside the box: what the inpainting pipeline repaints."""
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).rectangle((self.x, self.y, self.x + self.width - 1, self.y + self.height - 1), fill=255)
        return mask

    def cells(self, grid: int, size: int) -> list[int]:
        """The raster indices of the grid cells (size/grid pixels each) the box touches."""
        cell = size / grid
        cols = range(int(self.x // cell), int(-(-(self.x + self.width) // cell)))
        rows = range(int(self.y // cell), int(-(-(self.y + self.height) // cell)))
        return [r * grid + c for r in rows for c in cols]


def named_region(place: str, size: int) -> Region:
    cx, cy = (round(c * size) for c in CENTRES[place])
    half = round(RADIUS["large"] * size * 1.2) + REGION_MARGIN
    x0, y0 = max(0, cx - half), max(0, cy - half)
    x1, y1 = min(size, cx + half), min(size, cy + half)
    return Region(x0, y0, x1 - x0, y1 - y0)


def parse_region(region, size: int) -> Region:
    """A place of the world ("left", "right", "top", "bottom", "center") or "x,y,width,height" in pixels
    of the size x size canvas; anything else, or a box reaching outside the canvas, is refused."""
    if not isinstance(region, str) or not region.strip():
        raise InputError(f'region must be a place ({", ".join(CENTRES)}) or "x,y,width,height" in pixels')
    text = region.strip().lower()
    if text in CENTRES:
        return named_region(text, size)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise InputError(f'region {region[:40]!r} is neither a place ({", ".join(CENTRES)}) nor "x,y,width,height" '
                         "in whole pixels")
    x, y, width, height = (int(p) for p in parts)
    if width <= 0 or height <= 0:
        raise InputError(f"the region must have a width and a height above 0, got {width}x{height}")
    if x < 0 or y < 0 or x + width > size or y + height > size:
        raise InputError(f"the region {x},{y},{width},{height} reaches outside the {size}x{size} canvas")
    if width == size and height == size:
        raise InputError("the region is the whole canvas: that is a new picture, not a repaint")
    return Region(x, y, width, height)


@dataclass
class RepaintFrame:
    step: int  # denoising steps so far
    total_steps: int
    picture: Image.Image  # the canvas at this step (the noisy region, decoded; the original around it)
    seconds: float
    done: bool = False
    unet_evaluations: int = 0  # U-Net passes so far (two per step with guidance)


def repaint_stream(pipe, picture: Image.Image, prompt: str, region: Region, steps: int, guidance_scale: float,
                   seed: int, should_stop: Callable[[], bool] = lambda: False) -> Iterator[RepaintFrame]:
    """Denoise `region` of `picture` anew for `prompt`; one frame per step, the last with `done=True`."""
    from diffusers import StableDiffusionInpaintPipeline

    prompt = check_prompt(prompt)
    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    size = picture.width
    mask = region.mask(size)
    per_step = 2 if guidance_scale > 1 else 1
    frames: queue.Queue = queue.Queue()
    started = time.perf_counter()

    def on_step(pipeline, index, timestep, kwargs):
        if should_stop():
            pipeline._interrupt = True
            return kwargs
        with torch.no_grad():
            pixels = pipeline.vae.decode(kwargs["latents"] / pipeline.vae.config.scaling_factor).sample
        canvas = pipeline.image_processor.postprocess(pixels, output_type="pil")[0]
        canvas = Image.composite(canvas, picture, mask)  # only the region is being repainted
        frames.put(RepaintFrame(index + 1, steps, canvas, time.perf_counter() - started,
                                unet_evaluations=(index + 1) * per_step))
        return kwargs

    def run():
        try:
            if pipe.unet.config.in_channels in (4, 9):
                out = inpaint(prompt, image=picture, mask_image=mask, height=size, width=size, strength=1.0,
                              num_inference_steps=steps, guidance_scale=guidance_scale,
                              generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step).images[0]
            else:
                out = inpaint_plain_unet(inpaint, picture, mask, prompt, steps, guidance_scale, seed, on_step)
            final = inpaint.image_processor.apply_overlay(mask, picture, out)
            frames.put(RepaintFrame(steps, steps, final, time.perf_counter() - started, done=True,
                                    unet_evaluations=steps * per_step))
        except BaseException as error:
            frames.put(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while True:
        item = frames.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.done or should_stop():
            break
    worker.join()


@torch.no_grad()
def inpaint_plain_unet(inpaint, picture: Image.Image, mask: Image.Image, prompt: str, steps: int,
                       guidance_scale: float, seed: int, on_step) -> Image.Image:
    """diffusers' inpainting loop for a plain U-Net (strength 1), for any number of latent channels.
    `StableDiffusionInpaintPipeline` runs this loop only when the U-Net reads 4 channels, and refuses
    others; the storybook world's VAE has 8. Same steps: start from noise, and after every scheduler step
    put back the original's latents outside the region, noised to the next step's level."""
    device, dtype = inpaint.unet.device, inpaint.unet.dtype
    scheduler = type(inpaint.scheduler).from_config(inpaint.scheduler.config)  # a run's own state
    scheduler.set_timesteps(steps, device=device)
    guided = guidance_scale > 1
    embeds, negative = inpaint.encode_prompt(prompt, device, 1, guided)
    if guided:
        embeds = torch.cat([negative, embeds])
    vae, size = inpaint.vae, picture.width
    image = inpaint.image_processor.preprocess(picture, height=size, width=size).to(device, vae.dtype)
    original = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
    region = inpaint.mask_processor.preprocess(mask, height=size, width=size)
    region = torch.nn.functional.interpolate(region, size=original.shape[-2:]).to(device, dtype)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(original.shape, generator=generator, dtype=torch.float32).to(device, dtype)
    latents = noise * scheduler.init_noise_sigma
    for index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        prediction = inpaint.unet(model_input, t, encoder_hidden_states=embeds).sample
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + guidance_scale * (conditional - unconditional)
        latents = hold_kept(scheduler, index, scheduler.step(prediction, t, latents).prev_sample, original, noise,
                            1 - region)
        on_step(inpaint, index, t, {"latents": latents})
        if getattr(inpaint, "_interrupt", False):
            break
    pixels = vae.decode(latents / vae.config.scaling_factor).sample
    return inpaint.image_processor.postprocess(pixels, output_type="pil")[0]
