"""Layout-grounded rendering: each planned object denoised in its own region of the canvas.

A text prompt asks the U-Net to bind every colour to the right thing and place at once,
which is where small diffusion models fail most (GenEval's "colour binding"). A plan is
more than a prompt: it is a layout. LLM-grounded diffusion (Lian et al., 2023) uses the
LLM's layout to steer generation region by region; here that is done the MultiDiffusion way
(Bar-Tal et al., 2023), which needs no new weights. At every step the U-Net sees the whole
caption once and each object's own phrase once ("a large red cat on the left, at night"); each
guided prediction is kept inside its object's region, the whole-caption one everywhere
else, and the scheduler steps on the blend. Every region asks for one object only, so
there is nothing to bind. The hybrid loop uses it to redraw only the objects that failed,
keeping the rest of the previous round's latents (`keep`, `repaint_mask`).

    >>> from wordsworlds.worlds.layout import render_layout
    >>> image = render_layout(engine.pipe, scene, steps=20, seed=0).image     # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from PIL import Image

from ..world.draw import CENTRES, RADIUS
from ..world.scene import Scene, caption
from .diffusion import RenderStats, check_output

# How far a region reaches beyond its object's drawn extent, as a fraction of the canvas:
# half a latent cell on 8x8 latents, so the object's soft edge is painted by its own prompt.
REGION_MARGIN = 0.06


def region_masks(scene: Scene, latent_size: int) -> torch.Tensor:
    """(1 + objects, 1, n, n) weights summing to 1 at every latent cell: index 0 is the whole
    caption (the background), index i the i-th object's region. A cell near two objects
    goes to the nearer one."""
    centre = (np.arange(latent_size) + 0.5) / latent_size
    ys, xs = np.meshgrid(centre, centre, indexing="ij")
    owner = np.zeros((latent_size, latent_size), dtype=int)
    nearest = np.full((latent_size, latent_size), np.inf)
    for index, obj in enumerate(scene.objects, start=1):
        cx, cy = CENTRES[obj.position]
        reach = RADIUS[obj.size] * 1.2 + REGION_MARGIN  # a group of two or three reaches 1.2 radii
        distance = np.maximum(np.abs(xs - cx), np.abs(ys - cy)) / reach
        inside = (distance < 1) & (distance < nearest)
        owner[inside], nearest[inside] = index, distance[inside]
    masks = np.stack([owner == i for i in range(len(scene.objects) + 1)]).astype(np.float32)
    return torch.from_numpy(masks)[:, None]


@dataclass
class LayoutResult:
    image: Image.Image
    stats: RenderStats
    masks: torch.Tensor  # the regions used, see region_masks
    latents: torch.Tensor  # the final latents, for a later round to keep what came out right
    warnings: list[str]


@torch.inference_mode()
def render_layout(pipe, scene: Scene, steps: int = 20, guidance_scale: float = 5.0, seed: int = 0,
                  keep: tuple[torch.Tensor, torch.Tensor] | None = None, regional: bool = True) -> LayoutResult:
    """Render `scene` with each object's phrase confined to its region (see the module docstring).

    `keep=(latents, mask)` repaints only where `mask` is 0: where it is 1, every step's
    latents are replaced by the kept latents noised to that step's level (the way diffusers'
    inpainting pipeline treats a plain U-Net), so what came out right stays and the rest is
    drawn again around it. `regional=False` gives the whole caption every cell (a plain
    render, as the pipeline's), keeping only `keep`.
    """
    started = time.perf_counter()
    stats = RenderStats()
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    # Each region's prompt keeps the background, so the sky and ground agree across regions.
    prompts = [caption(scene)] + ([caption(Scene((o,), scene.background)) for o in scene.objects] if regional else [])
    cond, uncond = pipe.encode_prompt(prompts, pipe.device, 1, True, negative_prompt=[""] * len(prompts))
    embeddings = torch.cat([uncond[:1], cond])  # one unconditional row serves every prompt
    size = pipe.unet.config.sample_size
    masks = region_masks(scene, size).to(pipe.device, cond.dtype)
    blend = masks if regional else torch.ones_like(masks[:1])
    generator = torch.Generator().manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, size, size)
    latents = torch.randn(shape, generator=generator).to(pipe.device, cond.dtype) * scheduler.init_noise_sigma
    if keep is not None:
        kept, keep_mask = (x.to(pipe.device, cond.dtype) for x in keep)
        kept_noise = torch.randn(shape, generator=generator).to(pipe.device, cond.dtype)
    last = time.perf_counter()
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t).expand(len(embeddings), -1, -1, -1)
        output = pipe.unet(model_input, t, embeddings).sample
        stats.unet_evaluations += len(embeddings)
        unconditional, conditional = output[:1], output[1:]
        guided = unconditional + guidance_scale * (conditional - unconditional)
        blended = (blend * guided).sum(dim=0, keepdim=True)
        latents = scheduler.step(blended, t, latents).prev_sample
        if keep is not None:
            latents = hold_kept(scheduler, i, latents, kept, kept_noise, keep_mask)
        now = time.perf_counter()
        stats.step_times_s.append(now - last)
        stats.steps += 1
        last = now
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample[0]
    array = ((decoded.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    warnings = check_output(array)
    image = Image.fromarray((array * 255).round().astype(np.uint8))
    stats.total_s = time.perf_counter() - started
    stats.stopped_by = "done"
    return LayoutResult(image, stats, masks.cpu(), latents.cpu(), warnings)


def hold_kept(scheduler, index: int, latents: torch.Tensor, kept: torch.Tensor, noise: torch.Tensor,
              keep_mask: torch.Tensor) -> torch.Tensor:
    """After scheduler step `index`: the kept latents where `keep_mask` is 1, noised to the next step's level
    (clean after the last), the new ones elsewhere. How diffusers' inpainting holds what it keeps."""
    if index + 1 < len(scheduler.timesteps):
        kept = scheduler.add_noise(kept, noise, scheduler.timesteps[index + 1 : index + 2])
    return keep_mask * kept + (1 - keep_mask) * latents


def repaint_mask(masks: torch.Tensor, scene: Scene, seen: Scene | None) -> torch.Tensor:
    """(1, 1, n, n): 1 over the regions of objects that came out exactly as asked (to keep),
    0 elsewhere. The background is kept too unless something appeared where nothing was asked;
    with no scene read at all (a blank canvas, or more than three objects) everything is redrawn."""
    keep = torch.zeros_like(masks[:1])
    if seen is None:
        return keep
    seen_objects = set(seen.objects)
    asked_positions = {o.position for o in scene.objects}
    if not any(o.position not in asked_positions for o in seen_objects):
        keep += masks[:1]
    for index, obj in enumerate(scene.objects, start=1):
        if obj in seen_objects:
            keep += masks[index : index + 1]
    return keep
