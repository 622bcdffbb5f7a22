"""The worlds engine: any Stable-Diffusion-family pipeline, one denoising step at a time.

At every step it reports the current noisy latent and the model's guess of the clean image
(x0), taken through `callback_on_step_end` and a forward hook on the U-Net, plus a compute
meter: U-Net evaluations (steps x 2 with guidance), time per step, total.

    >>> from wordsworlds.presets import get_preset
    >>> from wordsworlds.worlds.diffusion import ImageGenerator
    >>> engine = ImageGenerator.load(get_preset("tiny"))    # the preset's diffusion model
    >>> result = engine.render("a large red cat on the left", steps=20, seed=0)
    >>> result.image.size
    (64, 64)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
)
from PIL import Image

from ..errors import (
    MAX_PROMPT_CHARS, InputError, RenderError, check_choice, check_number, check_prompt, check_seed, check_text,
)
from ..models import Report, load_diffusion
from ..presets import Preset
from ..serving import InLine
from . import attention
from .batching import PREVIEW_SHARE, RenderJob, RenderLoop, encode_prompt, x0_guess
from .previews import LatentPreviewer

SCHEDULERS = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),  # stochastic: fresh noise each step
    "ddpm": (DDPMScheduler, {}),  # stochastic, the original sampler
    "lcm": (LCMScheduler, {}),  # for LCM-distilled weights (LCM-LoRA, models.py): 2-8 steps
}
STOCHASTIC = ("euler-ancestral", "ddpm", "lcm")  # samplers that draw fresh noise at every step
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SIDE = 1024


@dataclass(frozen=True)
class Branch:
    """Rewind a render to step `at_step` and continue from that latent with another prompt or seed:
    the first `at_step` steps are the original's, the rest follow the change."""

    at_step: int
    prompt: str = ""  # "": the original prompt
    seed: int | None = None  # None: the original seed (it draws only the noise still to come)


@dataclass
class RenderOptions:
    steps: int = 20
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    seed: int = 0
    scheduler: str = "dpm++"
    height: int | None = None  # None: the model's native size
    width: int | None = None
    previews: bool = True  # decode an x0 preview at every step (the streaming cost)
    record: bool = False  # keep every step's latents and cross-attention maps in the result (RenderTrace)
    branch: Branch | None = None


def validate_branch(options: RenderOptions, at_step, prompt: str = "", seed=None, original_prompt: str = "") -> Branch:
    """A branch of a render made with `options`, checked before any model work."""
    at_step = check_number("at_step", at_step, int)
    if not 1 <= at_step < options.steps:
        raise InputError(f"at_step must be a step of the run before its last, 1 to {options.steps - 1}, got {at_step}"
                         if options.steps > 1 else "a one-step run has no step to branch from")
    prompt = check_prompt(prompt) if isinstance(prompt, str) and prompt.strip() else ""
    if prompt == original_prompt:
        prompt = ""
    seed = None if seed in (None, "") or seed == options.seed else check_seed(seed)
    if not prompt and seed is None:
        raise InputError("the branch changes nothing: give it another prompt or another seed")
    if seed is not None and not prompt and options.scheduler not in STOCHASTIC:
        raise InputError(f"with the {options.scheduler} sampler the seed only draws the starting noise, so a new seed "
                         f"at step {at_step} would change nothing; change the prompt, or sample with "
                         f"{' or '.join(STOCHASTIC[:2])}, which draw fresh noise at every step")
    return Branch(at_step, prompt, seed)


def validate_render_options(steps=20, guidance_scale=5.0, negative_prompt="", seed=0, scheduler="dpm++",
                            height=None, width=None, previews=True, record=False) -> RenderOptions:
    """Check every option before any model work; raise InputError with a message a person can act on."""
    steps = check_number("steps", steps, int, 1, MAX_STEPS)
    guidance_scale = check_number("guidance_scale", guidance_scale, float, 0, MAX_GUIDANCE)
    if negative_prompt is None:
        negative_prompt = ""
    if not isinstance(negative_prompt, str) or len(negative_prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the negative prompt must be text of at most {MAX_PROMPT_CHARS:,} characters")
    if negative_prompt.strip():
        negative_prompt = check_text(negative_prompt, "the negative prompt")  # no control characters either
    seed = check_seed(seed)
    scheduler = check_choice("scheduler", scheduler, SCHEDULERS)
    sides = []
    for name, side in (("height", height), ("width", width)):
        if side in (None, 0, ""):
            sides.append(None)
            continue
        side = check_number(name, side, int)
        if side % 8 or not 8 <= side <= MAX_SIDE:
            raise InputError(f"{name} must be a multiple of 8 between 8 and {MAX_SIDE}, got {side}")
        sides.append(side)
    return RenderOptions(steps, guidance_scale, negative_prompt, seed, scheduler, sides[0], sides[1], bool(previews),
                         bool(record))


@dataclass
class RenderStats:
    steps: int = 0
    unet_evaluations: int = 0
    step_times_s: list[float] = field(default_factory=list)
    preview_s: float = 0.0  # time spent making the step previews
    total_s: float = 0.0
    stopped_by: str = ""  # "done" or "cancelled"
    batch_size: int = 0  # the most renders one of this run's U-Net calls served (1: alone)

    @property
    def mean_step_s(self) -> float:
        return sum(self.step_times_s) / len(self.step_times_s) if self.step_times_s else 0.0

    def to_dict(self) -> dict:
        data = asdict(self) | {"mean_step_s": round(self.mean_step_s, 5)}
        data["step_times_s"] = [round(s, 5) for s in self.step_times_s]
        return data


@dataclass
class StepFrame:
    step: int  # 1-based
    total_steps: int
    timestep: float
    noisy: Image.Image  # the current latent x_t, seen through a cheap linear preview
    x0: Image.Image | None  # the model's guess of the clean image at this step (None with previews off)
    elapsed_s: float
    x0_decoded: bool = False  # True: a full VAE decode; False: the cheap linear preview (budget spent)
    stats: RenderStats | None = None  # the compute meter so far


@dataclass
class RenderTrace:
    """What a recorded render keeps of every step, for a replay at any pace (replay.py). Arrays, not tensors:
    a trace crosses from the engine process in a pickle, and torch would share tensors through file handles."""

    tokens: list[str]  # the prompt as the text encoder reads it, one entry per attention map
    noisy: list[np.ndarray] = field(default_factory=list)  # x_t as the U-Net saw it at each step (c, h, w), float16
    x0: list[np.ndarray] = field(default_factory=list)  # the model's guess of the clean latent at each step
    attention: list[np.ndarray | None] = field(default_factory=list)  # (tokens, h, w) per step; None: not kept

    def add(self, seen: torch.Tensor, x0: torch.Tensor, attention: torch.Tensor | None) -> None:
        self.noisy.append(seen[-1].detach().to("cpu", torch.float16).numpy())
        self.x0.append(x0[-1].detach().to("cpu", torch.float16).numpy())
        if attention is not None:  # the context's first token is BOS; keep the prompt's own tokens
            attention = attention[1:1 + len(self.tokens)].to(torch.float16).numpy()
        self.attention.append(attention)


@dataclass
class RenderResult:
    image: Image.Image
    stats: RenderStats
    warnings: list[str] = field(default_factory=list)
    trace: RenderTrace | None = None  # every step's latents and attention, when recorded


def pipeline_with_scheduler(pipe, scheduler: str = ""):
    """A pipeline sharing `pipe`'s weights with a scheduler of its own (a key of SCHEDULERS; "": the
    same kind as `pipe`'s), as diffusers' `from_pipe` does. Schedulers keep per-run state (timesteps,
    solver history), so every run needs its own: one shared between concurrent requests breaks them."""
    if scheduler:
        cls, extra = SCHEDULERS[scheduler]
        fresh = cls.from_config(pipe.scheduler.config, **extra)
    else:
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)
    settings = {k: pipe.config[k] for k in ("requires_safety_checker", "force_zeros_for_empty_prompt")
                if k in pipe.config}  # SD's and SDXL's options beside their components
    copy = type(pipe)(**(pipe.components | {"scheduler": fresh}), **settings)
    copy.set_progress_bar_config(disable=True)
    return copy


class ImageGenerator:
    """Renders with a shared pipeline; each render gets its own scheduler (`pipeline_with_scheduler`).

    With `batching` (the app's default), every render is served by the U-Net's one RenderLoop,
    which steps all active renders in one U-Net call (worlds/batching.py); without it (the
    baseline, and ZeroGPU where each call runs in a process of its own) each render is one
    call of the diffusers pipeline. Both give the same picture for the same seed."""

    def __init__(self, pipe: StableDiffusionPipeline, report: Report | None = None, preview_decoder=None,
                 batching: bool = False):
        self.pipe = pipe
        self.report = report  # what runs (models.Report)
        self.preview_decoder = preview_decoder  # e.g. TAESD for the x0 previews; None: the full VAE
        self.previewer = _previewer(pipe.vae)
        # An LCM-distilled U-Net takes the guidance as an input (time_cond_proj_dim): such models run alone.
        batchable = pipe.unet.config.time_cond_proj_dim is None
        self.loop = _render_loop(pipe.unet) if batching and batchable else None
        self.attention = attention.install(pipe.unet)  # False: a compiled U-Net, no attention maps

    def prompt_tokens(self, prompt: str) -> list[str]:
        """The prompt as the text encoder reads it (truncated at its limit), without the start and end tokens."""
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids[1:-1]
        return [tokenizer.decode([i]).strip() or tokenizer.convert_ids_to_tokens(i) for i in ids]

    @property
    def running(self) -> int:
        """Requests the U-Net's loop is stepping now (0 without batching)."""
        return self.loop.load[0] if self.loop is not None else 0

    @classmethod
    def load(cls, preset: Preset) -> "ImageGenerator":
        """The preset's diffusion pipeline (loaded once per process, models.load_diffusion)."""
        diffusion = load_diffusion(preset)
        return cls(diffusion.pipe, diffusion.report, diffusion.preview_decoder,
                   batching=preset.batched)

    @property
    def native_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def stream(self, prompt: str, options: RenderOptions | None = None, should_stop: Callable[[], bool] | None = None,
               line_updates: bool = False, skip_stale: bool = False,
               **option_kwargs) -> Iterator[StepFrame | RenderResult | InLine]:
        """Yield a StepFrame per denoising step, then the RenderResult. With `line_updates`, InLine
        items say the request's place while it waits for the batch; with `skip_stale` (a live view), a
        frame the reader has not taken when the next is ready is skipped (batched only)."""
        prompt = check_prompt(prompt)
        options = options or validate_render_options(**option_kwargs)
        if self.loop is not None:
            yield from self.loop.stream(self._job(prompt, options, should_stop), line_updates, skip_stale)
            return
        frames: queue.Queue = queue.Queue()
        abandoned = threading.Event()  # set when the consumer stops listening (a cancelled request)

        def stop() -> bool:
            return abandoned.is_set() or (should_stop is not None and should_stop())

        worker = threading.Thread(target=self._run, args=(prompt, options, stop, frames), daemon=True)
        worker.start()
        try:
            while True:
                item = frames.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, RenderResult):
                    break
        finally:
            abandoned.set()  # the worker ends at its next step instead of rendering for nobody
        worker.join()

    def _job(self, prompt: str, options: RenderOptions, should_stop) -> RenderJob:
        """A render for the batch loop, with the callbacks that turn its steps into frames."""
        pipe = pipeline_with_scheduler(self.pipe, options.scheduler)
        stats = RenderStats()
        started = time.perf_counter()
        per_step = 2 if options.guidance_scale > 1 else 1
        trace = RenderTrace(self.prompt_tokens(prompt)) if options.record else None

        def on_step(index, t, latents, x0, x0_picture, batch, step_s, seen, maps) -> StepFrame:
            stats.step_times_s.append(step_s)
            stats.steps, stats.unet_evaluations = index + 1, stats.unet_evaluations + per_step
            stats.batch_size = max(stats.batch_size, batch)
            if trace is not None:
                trace.add(seen, x0, maps)
            return self._frame(index, t, latents, x0 if options.previews else None, x0_picture, options, stats, started)

        def on_end(array, reason) -> RenderResult:
            stats.stopped_by = reason
            stats.total_s = time.perf_counter() - started
            return _result(array, stats, trace)

        return RenderJob(pipe, prompt, options.negative_prompt, options.steps, options.guidance_scale, options.seed,
                         options.height, options.width, on_step, on_end,
                         self.decode_many if options.previews else None, should_stop,
                         record_attention=options.record and self.attention, branch=options.branch)

    def _frame(self, index, t, latents, x0, x0_picture, options, stats, started) -> StepFrame:
        """One step's frame: x_t through the linear preview; x0 as decoded in full (`x0_picture`), else linear."""
        now = time.perf_counter()
        noisy = self.previewer.to_image(latents[-1].cpu())
        image = None
        if x0 is not None:
            image = x0_picture if x0_picture is not None else self.previewer.to_image(x0[-1].cpu(), smooth=True)
        stats.preview_s += time.perf_counter() - now
        stats.total_s = now - started
        return StepFrame(index + 1, options.steps, float(t), noisy, image, now - started,
                         x0_picture is not None, replace(stats, step_times_s=list(stats.step_times_s)))

    def render(self, prompt: str, **options) -> RenderResult:
        *_, result = self.stream(prompt, **options)
        return result

    def _run(self, prompt, options, should_stop, frames: queue.Queue) -> None:
        try:
            frames.put(self._denoise(prompt, options, should_stop, frames.put))
        except BaseException as error:  # hand every failure to the consumer thread
            frames.put(error)

    @torch.inference_mode()
    def _denoise(self, prompt, options, should_stop, emit) -> RenderResult:
        pipe = pipeline_with_scheduler(self.pipe, options.scheduler)
        stats = RenderStats()
        owner = threading.get_ident()
        latest = {}
        guided = options.guidance_scale > 1
        trace = RenderTrace(self.prompt_tokens(prompt)) if options.record else None
        generator = torch.Generator().manual_seed(options.seed)
        branch = self._branch_conditioning(pipe, options, guided, prompt) if options.branch is not None else None

        def capture(module, args, kwargs, output):
            # The U-Net is shared between concurrent renders: only count our own thread's calls.
            if threading.get_ident() != owner:
                return
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            stats.unet_evaluations += sample.shape[0]
            if not options.previews and trace is None:
                return
            out = output[0] if isinstance(output, tuple) else output.sample
            if guided:
                uncond, cond = out.chunk(2)
                out, sample = uncond + options.guidance_scale * (cond - uncond), sample.chunk(2)[1]
            latest["x0"] = x0_guess(pipe.scheduler, out, sample, t.flatten()[0] if torch.is_tensor(t) else t)
            latest["seen"] = sample

        started = last = time.perf_counter()

        def on_step_end(pipeline, i, t, tensors):
            nonlocal last
            now = time.perf_counter()
            stats.step_times_s.append(now - last)
            stats.steps, stats.batch_size = i + 1, 1
            # A full VAE decode of x0 can cost half a step of a small model: decode it while the
            # previews stay within their share of the time, and always at the last step.
            last_step = i + 1 == pipeline.num_timesteps
            decode = last_step or stats.preview_s <= PREVIEW_SHARE * sum(stats.step_times_s)
            if trace is not None:
                maps = store.take() if store is not None else None
                trace.add(latest["seen"], latest["x0"], None if maps is None else maps[0])
            x0 = latest.get("x0") if options.previews else None
            began = time.perf_counter()
            picture = self.decode(x0) if decode and x0 is not None else None
            stats.preview_s += time.perf_counter() - began
            emit(self._frame(i, t, tensors["latents"], x0, picture, options, stats, started))
            if should_stop is not None and should_stop():
                pipeline._interrupt = True  # diffusers skips the remaining steps
                stats.stopped_by = "cancelled"
            if branch is not None and i + 1 == options.branch.at_step:  # the next step is the branch's first
                tensors["prompt_embeds"] = branch["prompt_embeds"]
                if "add_text_embeds" in branch:
                    tensors["add_text_embeds"] = branch["add_text_embeds"]
                if options.branch.seed is not None:
                    generator.manual_seed(options.branch.seed)
            last = time.perf_counter()  # preview time is not counted as step time
            return tensors

        hook = pipe.unet.register_forward_hook(capture, with_kwargs=True)
        latent_size = ((options.height or self.native_size) // self.pipe.vae_scale_factor,
                       (options.width or self.native_size) // self.pipe.vae_scale_factor)
        record = trace is not None and self.attention
        try:
            with attention.recording([-1], latent_size) if record else nullcontext() as store:
                output = pipe(
                    prompt,
                    negative_prompt=options.negative_prompt or None,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance_scale,
                    height=options.height,
                    width=options.width,
                    generator=generator,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"] + list(branch or {}),
                    output_type="np",
                )
        finally:
            hook.remove()
        stats.total_s = time.perf_counter() - started
        stats.stopped_by = stats.stopped_by or "done"
        return _result(output.images[0], stats, trace)

    def _branch_conditioning(self, pipe, options: RenderOptions, guided: bool, prompt: str) -> dict:
        """The branch's conditioning as the pipeline's step callback takes it (SDXL: with its pooled text)."""
        height = options.height or self.native_size
        width = options.width or self.native_size
        embeds, added = encode_prompt(pipe, options.branch.prompt or prompt, options.negative_prompt, guided, height, width,
                                      pipe.unet.device)
        return {"prompt_embeds": embeds} | ({"add_text_embeds": added["text_embeds"]} if added else {})

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """Decode one latent (the x0 preview): the tiny preview decoder if there is one, else the full VAE."""
        return self.decode_many(latents[-1:])[0]

    @torch.inference_mode()
    def decode_many(self, latents: torch.Tensor) -> list[Image.Image]:
        """Decode x0 previews (k, c, h, w) in one call of the preview decoder (or the full VAE)."""
        return decode_latents(self.pipe.vae if self.preview_decoder is None else self.preview_decoder, latents)


def _result(array: np.ndarray, stats: RenderStats, trace: RenderTrace | None = None) -> RenderResult:
    """The final picture from the decoded array (H, W, 3) in [0, 1], checked for NaN and blankness."""
    warnings = check_output(array)
    image = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    return RenderResult(image=image, stats=stats, warnings=warnings, trace=trace)


def check_output(array: np.ndarray) -> list[str]:
    """Raise on NaN output; warn on a blank one."""
    if not np.isfinite(array).all():
        raise RenderError(
            "the model produced NaN values (a half-precision overflow is the usual cause); "
            "try again in float32 or with the VAE upcast"
        )
    if float(array.std()) < 0.01:
        return ["the image came out blank (a single flat colour); try another seed or more steps"]
    return []


_PREVIEWERS: dict[int, LatentPreviewer] = {}
_PREVIEWERS_LOCK = threading.Lock()


def _previewer(vae) -> LatentPreviewer:
    """One fitted latent previewer per VAE (a fit encodes 16 patchworks: done once, not per engine)."""
    with _PREVIEWERS_LOCK:
        if id(vae) not in _PREVIEWERS:
            _PREVIEWERS[id(vae)] = LatentPreviewer.fit(vae)
        return _PREVIEWERS[id(vae)]


_LOOPS: dict[int, RenderLoop] = {}
_LOOPS_LOCK = threading.Lock()


def _render_loop(unet) -> RenderLoop:
    """The U-Net's one RenderLoop (a worker thread), made by the first engine that asks."""
    with _LOOPS_LOCK:
        if id(unet) not in _LOOPS:
            _LOOPS[id(unet)] = RenderLoop(unet)
        return _LOOPS[id(unet)]


def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """Latents (k, c, h, w) -> k pictures, through a VAE (AutoencoderKL or AutoencoderTiny), on the VAE's device."""
    latents = latents.to(vae.device, vae.dtype)
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    arrays = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array) for array in arrays]
