"""Iteration-level batching for the worlds engine: every active render's next step from one U-Net call.

Each request keeps what a diffusers pipeline call keeps for one image: its own scheduler (with
its own timesteps and solver history), its own seeded starting noise and random generator, its
prompt's embeddings, its guidance scale. At each step the loop stacks every active render's
model input (two rows with classifier-free guidance, one without), with each row's own
timestep (the U-Net takes one per sample) and own text embeddings, and calls the U-Net once;
then each render combines its rows with its own guidance and steps its own scheduler. Renders
join and leave between steps. The per-request steps follow `StableDiffusionPipeline.__call__`
(and SDXL's, with its pooled text and size conditioning) line for line, so a seeded request
gives the picture it gives alone.

Previews: the model's x0 guess is decoded by the VAE for a few renders per step, those that
have waited longest, within PREVIEW_SHARE of the step's U-Net time; the others show the cheap
linear preview (worlds/previews.py). The last step is always decoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline

from ..serving import CAPACITY, MAX_BATCH, Request, StepLoop
from .attention import recording

PREVIEW_SHARE = 0.15  # full x0 decodes may cost at most this share of the denoising time (plus the last)


@dataclass(eq=False)
class RenderJob:
    """One render, as the worlds engine (diffusion.py) hands it to the loop."""

    pipe: object  # a pipeline with this render's own scheduler (diffusion.pipeline_with_scheduler)
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    height: int | None
    width: int | None
    # (step index, timestep, latents, x0 guess, x0 decoded in full or None, requests in this U-Net call, seconds,
    # x_t as the U-Net saw it, the step's cross-attention maps or None) -> the item to emit
    on_step: Callable[..., object]
    on_end: Callable[[np.ndarray, str], object]  # (the decoded picture, "done" or "cancelled") -> the result to emit
    decode_x0: Callable[[torch.Tensor], list] | None  # x0 latents (k, c, h, w) -> k pictures in one call; None: no previews
    should_stop: Callable[[], bool] | None = None
    record_attention: bool = False  # keep each step's cross-attention maps (worlds/attention.py)
    branch: object = None  # diffusion.Branch: from its step on, another prompt or seed


@dataclass(eq=False)
class _Render:
    latents: torch.Tensor
    timesteps: list
    embeds: torch.Tensor  # (rows, tokens, dim): negative then positive with guidance
    added: dict | None  # SDXL's pooled text embeddings and size ids, rows as `embeds`
    extra_step_kwargs: dict
    guided: bool
    index: int = 0  # the next step
    since_decode: int = 1 << 30  # steps since the last full x0 decode (none yet: first in line)
    branch: tuple | None = None  # the branch's conditioning: (embeddings, added conditioning)


# Renders stepped per turn on the cores (StepLoop.turn_batch). A step of fifty renders at 16x16 latents holds
# the cores about 1.3 s; in turns of 16 the words loop gets the cores between them (benchmarks/bench_room.py).
RENDER_TURN = 16
# A room's renders take their first steps before the words' prefill (StepLoop.newcomers_ahead): fifty renders'
# first steps cost about 0.7 s together, fifty prompts' prefill about 2.2 s, so everyone sees a first frame
# before the prompts are read. Fifty "Run both" (bench_room.py, bf16 U-Net): first shown p95 2.3 s without, 1.3 s with.


class RenderLoop(StepLoop):
    """One worker thread per U-Net, stepping every active render together."""

    def __init__(self, unet, max_batch: int = MAX_BATCH, capacity: int = CAPACITY):
        self.unet = unet
        self._decode_s = 0.0  # running mean cost of one full x0 decode, for the preview budget
        self._credit = 0.0  # seconds of decoding the budget still allows
        super().__init__("worlds", max_batch=max_batch, capacity=capacity, turn_batch=RENDER_TURN,
                         newcomers_ahead=True)

    @torch.inference_mode()
    def start(self, request: Request) -> None:
        """What the pipeline's __call__ does before its loop: embeddings, timesteps, starting noise."""
        job: RenderJob = request.job
        pipe = job.pipe
        device = self.unet.device
        if not self._active:
            self._credit = 0.0  # after a pause, the preview budget starts afresh
        height = job.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = job.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        guided = job.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        embeds, added = encode_prompt(pipe, job.prompt, job.negative_prompt, guided, height, width, device)
        pipe.scheduler.set_timesteps(job.steps, device=device)
        generator = torch.Generator().manual_seed(job.seed)
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width, embeds.dtype, device,
                                       generator)
        request.state = _Render(latents, list(pipe.scheduler.timesteps), embeds, added,
                                pipe.prepare_extra_step_kwargs(generator, 0.0), guided)
        if job.branch is not None:
            prompt = job.branch.prompt or job.prompt
            request.state.branch = encode_prompt(pipe, prompt, job.negative_prompt, guided, height, width, device)

    @torch.inference_mode()
    def step(self, active: list[Request]) -> list[Request]:
        ended = []
        running = []
        for request in active:
            if request.cancelled.is_set():  # the reader is gone: nobody to draw for
                request.finish()
                ended.append(request)
            else:
                running.append(request)
        # Renders of different sizes cannot share a U-Net call: one call per latent shape.
        shapes: dict[tuple, list[Request]] = {}
        for request in running:
            shapes.setdefault(tuple(request.state.latents.shape), []).append(request)
        for group in shapes.values():
            ended += self._step_group(group)
        return ended

    def _step_group(self, group: list[Request]) -> list[Request]:
        started = time.perf_counter()
        inputs, timesteps, embeds, added, recorded = [], [], [], [], []
        rows = 0
        for request in group:
            render, scheduler = request.state, request.job.pipe.scheduler
            if render.branch is not None and render.index == request.job.branch.at_step:
                switch_to_branch(render, request.job)
            t = render.timesteps[render.index]
            x = scheduler.scale_model_input(torch.cat([render.latents] * (2 if render.guided else 1)), t)
            inputs.append(x)
            rows += x.shape[0]
            if request.job.record_attention:
                recorded.append(rows - 1)  # the prompt's row (the last of a guided pair)
            timesteps.append(t.reshape(1).expand(x.shape[0]) if torch.is_tensor(t) else torch.full((x.shape[0],), t))
            embeds.append(render.embeds)
            if render.added is not None:
                added.append(render.added)
        sample = torch.cat(inputs)
        added_cond = {k: torch.cat([a[k] for a in added]) for k in added[0]} if added else None
        with recording(recorded, tuple(sample.shape[-2:])) if recorded else nullcontext() as store:
            output = self.unet(sample, torch.cat(timesteps).to(sample.device), encoder_hidden_states=torch.cat(embeds),
                               added_cond_kwargs=added_cond, return_dict=False)[0]
        maps = dict(zip(recorded, store.maps())) if recorded and store.layers else {}
        unet_s = time.perf_counter() - started

        results, row = [], 0
        for request, x in zip(group, inputs):
            render, job = request.state, request.job
            scheduler = job.pipe.scheduler
            out = output[row:row + x.shape[0]]
            row += x.shape[0]
            t = render.timesteps[render.index]
            if render.guided:
                uncond, cond = out.chunk(2)
                noise_pred, seen = uncond + job.guidance_scale * (cond - uncond), x[1:]
            else:
                noise_pred, seen = out, x
            x0 = x0_guess(scheduler, noise_pred, seen, t)
            render.latents = scheduler.step(noise_pred, t, render.latents, **render.extra_step_kwargs,
                                            return_dict=False)[0]
            render.index += 1
            results.append((request, t, x0, seen, maps.get(row - 1)))
        step_s = time.perf_counter() - started

        # The preview budget: full x0 decodes, for the renders that waited longest (a newcomer first), while
        # the decodes' time stays within PREVIEW_SHARE of the U-Net's (a credit carried from step to step).
        self._credit = min(self._credit + PREVIEW_SHARE * unet_s, 4 * PREVIEW_SHARE * unet_s)
        granted = []
        for request, _, x0, *_ in sorted(results, key=lambda r: -r[0].state.since_decode):
            if request.job.decode_x0 is None:  # previews off
                continue
            if request.state.index == len(request.state.timesteps) or self._credit >= 0:
                granted.append((request, x0))
                self._credit -= self._decode_s
        previews = self._decode_previews(granted)
        ended, finals = [], []
        for request, t, x0, seen, attention in results:
            render, job = request.state, request.job
            picture = previews.get(id(request))
            render.since_decode = 0 if picture is not None else render.since_decode + 1
            request.emit(job.on_step(render.index - 1, float(t), render.latents, x0, picture, len(group), step_s,
                                     seen, attention), replaceable=True)
            if render.index == len(render.timesteps):
                finals.append((request, "done"))
            elif job.should_stop is not None and job.should_stop():  # Stop: the picture so far, as the pipeline's interrupt
                finals.append((request, "cancelled"))
        for (request, reason), picture in zip(finals, _decode_finals([r for r, _ in finals])):
            request.finish(request.job.on_end(picture, reason))
            ended.append(request)
        return ended

    def _decode_previews(self, granted: list) -> dict:
        """The granted x0 previews, decoded in one call per decoder; updates the mean cost of one."""
        pictures = {}
        if not granted:
            return pictures
        began = time.perf_counter()
        by_decoder: dict = {}
        for request, x0 in granted:
            by_decoder.setdefault(request.job.decode_x0, []).append((request, x0))
        for decode, renders in by_decoder.items():
            for (request, _), picture in zip(renders, decode(torch.cat([x0[-1:] for _, x0 in renders]))):
                pictures[id(request)] = picture
        spent = (time.perf_counter() - began) / len(granted)
        self._decode_s = spent if not self._decode_s else 0.9 * self._decode_s + 0.1 * spent
        return pictures


def encode_prompt(pipe, prompt: str, negative_prompt: str, guided: bool, height: int, width: int, device):
    """The U-Net's text conditioning for one render, as the pipeline's __call__ makes it: the prompt's
    embeddings (after the negative prompt's, with guidance) and SDXL's pooled text and size ids."""
    negative = negative_prompt or None
    if isinstance(pipe, StableDiffusionXLPipeline):
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
            negative_prompt=negative)
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection).to(device)
        if guided:
            added = {"text_embeds": torch.cat([negative_pooled, pooled]), "time_ids": time_ids.repeat(2, 1)}
        else:
            added = {"text_embeds": pooled, "time_ids": time_ids}
    else:
        embeds, negative_embeds = pipe.encode_prompt(prompt, device, 1, guided, negative)
        added = None
    return (torch.cat([negative_embeds, embeds]) if guided else embeds), added


def switch_to_branch(render: _Render, job: RenderJob) -> None:
    """From the branch's first step on: its prompt's conditioning, and its seed for the noise still to draw
    (stochastic samplers draw fresh noise at every step; the generator is reseeded in place)."""
    render.embeds, render.added = render.branch
    if job.branch.seed is not None and "generator" in render.extra_step_kwargs:
        render.extra_step_kwargs["generator"].manual_seed(job.branch.seed)


def _decode_finals(requests: list[Request]) -> list[np.ndarray]:
    """The final pictures (H, W, 3) in [0, 1], through the full VAE, one call for the renders that share it."""
    pictures: dict[int, np.ndarray] = {}
    by_vae: dict[int, list[Request]] = {}
    for request in requests:
        by_vae.setdefault(id(request.job.pipe.vae), []).append(request)
    for renders in by_vae.values():
        vae = renders[0].job.pipe.vae
        latents = torch.cat([r.state.latents for r in renders]).to(vae.dtype) / vae.config.scaling_factor
        decoded = (vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        pictures.update({id(r): array for r, array in zip(renders, decoded)})
    return [pictures[id(r)] for r in requests]


def x0_guess(scheduler, noise_pred: torch.Tensor, seen: torch.Tensor, t) -> torch.Tensor:
    """The model's guess of the clean latent from its output. The U-Net always sees the variance-
    preserving x_t (Euler-type schedulers scale their input to it), so one formula serves every
    scheduler: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), or sqrt(a) x_t - sqrt(1 - a) v."""
    a = scheduler.alphas_cumprod[int(round(float(t)))].to(noise_pred.device, noise_pred.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * seen - (1 - a).sqrt() * noise_pred
    return (seen - (1 - a).sqrt() * noise_pred) / a.sqrt()
