"""The worlds engine: any Stable-Diffusion-family pipeline, one denoising step at a time.

At every step it reports the current noisy latent and the model's guess of the clean image
(x0), taken through `callback_on_step_end` and a forward hook on the U-Net, plus a compute
meter: U-Net evaluations (steps x 2 with guidance), time per step, total.

    >>> from wordsworlds.image import ImageGenerator
    >>> engine = ImageGenerator.load()                       # the preset's diffusion model
    >>> result = engine.render("a large red circle on the left", steps=20, seed=0)
    >>> result.image.size
    (64, 64)
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

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

from .previews import LatentPreviewer
from .text import InputError, _number, validate_prompt

SCHEDULERS = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),  # stochastic: fresh noise each step
    "ddpm": (DDPMScheduler, {}),  # stochastic, the original sampler
    "lcm": (LCMScheduler, {}),  # for LCM-distilled weights (LCM-LoRA, hub.py): 2-8 steps
}
MAX_STEPS = 100
MAX_SIDE = 1024
MAX_PROMPT_CHARS = 2000
PREVIEW_SHARE = 0.15  # full x0 decodes may cost at most this share of the denoising time (plus the last)


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


def validate_render_options(steps=20, guidance_scale=5.0, negative_prompt="", seed=0, scheduler="dpm++",
                            height=None, width=None, previews=True) -> RenderOptions:
    """Check every option before any model work; raise InputError with a message a person can act on."""
    steps = _number("steps", steps, int)
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    guidance_scale = _number("guidance_scale", guidance_scale)
    if not 0 <= guidance_scale <= 30:
        raise InputError(f"guidance_scale must be between 0 and 30, got {guidance_scale}")
    if negative_prompt is None:
        negative_prompt = ""
    if not isinstance(negative_prompt, str) or len(negative_prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the negative prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    seed = _number("seed", seed, int)
    if not 0 <= seed < 2**32:
        raise InputError(f"seed must be between 0 and 2**32 - 1, got {seed}")
    if scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    sides = []
    for name, side in (("height", height), ("width", width)):
        if side in (None, 0, ""):
            sides.append(None)
            continue
        side = _number(name, side, int)
        if side % 8 or not 8 <= side <= MAX_SIDE:
            raise InputError(f"{name} must be a multiple of 8 between 8 and {MAX_SIDE}, got {side}")
        sides.append(side)
    return RenderOptions(steps, guidance_scale, negative_prompt, seed, scheduler, sides[0], sides[1], bool(previews))


@dataclass
class StepFrame:
    step: int  # 1-based
    total_steps: int
    timestep: float
    noisy: Image.Image  # the current latent x_t, seen through a cheap linear preview
    x0: Image.Image | None  # the model's guess of the clean image at this step (None with previews off)
    elapsed_s: float
    x0_decoded: bool = False  # True: a full VAE decode; False: the cheap linear preview (budget spent)


@dataclass
class RenderStats:
    steps: int = 0
    unet_evaluations: int = 0
    step_times_s: list[float] = field(default_factory=list)
    preview_s: float = 0.0  # time spent making the step previews
    total_s: float = 0.0
    stopped_by: str = ""  # "done" or "cancelled"

    @property
    def mean_step_s(self) -> float:
        return sum(self.step_times_s) / len(self.step_times_s) if self.step_times_s else 0.0

    def to_dict(self) -> dict:
        data = asdict(self) | {"mean_step_s": round(self.mean_step_s, 5)}
        data["step_times_s"] = [round(s, 5) for s in self.step_times_s]
        return data


@dataclass
class RenderResult:
    image: Image.Image
    stats: RenderStats
    warnings: list[str] = field(default_factory=list)


class RenderError(RuntimeError):
    """The model produced no usable image (NaN or blank output)."""


def load_pipeline(source: str) -> StableDiffusionPipeline:
    """One SD or SDXL pipeline per process, shared, with the $WORDSWORLDS_* acceleration policy
    applied (hub.load_diffusion); each render gets its own scheduler (see ImageGenerator)."""
    from .hub import load_diffusion

    return load_diffusion(source)[0]


class ImageGenerator:
    def __init__(self, pipe: StableDiffusionPipeline, source: str = "", accel: list[str] | None = None,
                 preview_decoder=None):
        self.pipe = pipe
        self.source = source
        self.accel = list(accel or [])  # what the acceleration policy ran, one line per option (accel.py)
        self.preview_decoder = preview_decoder  # e.g. TAESD for the x0 previews; None: the full VAE
        self.previewer = LatentPreviewer.fit(pipe.vae)

    @classmethod
    def load(cls, source: str | None = None, preset: str | None = None) -> "ImageGenerator":
        from .presets import get_preset

        source = source or get_preset(preset).diffusion
        return _shared_generator(source)

    @property
    def native_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def token_limit(self) -> int:
        return self.pipe.tokenizer.model_max_length

    def _pipeline_for(self, options: RenderOptions) -> StableDiffusionPipeline:
        # Schedulers keep per-run state (timesteps, solver history), so every render gets
        # its own; the weights are shared.
        cls, extra = SCHEDULERS[options.scheduler]
        scheduler = cls.from_config(self.pipe.scheduler.config, **extra)
        settings = {k: self.pipe.config[k] for k in ("requires_safety_checker", "force_zeros_for_empty_prompt")
                    if k in self.pipe.config}  # SD's and SDXL's options beside their components
        pipe = type(self.pipe)(**(self.pipe.components | {"scheduler": scheduler}), **settings)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def stream(self, prompt: str, options: RenderOptions | None = None, should_stop: Callable[[], bool] | None = None,
               **option_kwargs) -> Iterator[StepFrame | RenderResult]:
        """Yield a StepFrame per denoising step, then the RenderResult."""
        prompt = validate_prompt(prompt, MAX_PROMPT_CHARS)
        options = options or validate_render_options(**option_kwargs)
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
        pipe = self._pipeline_for(options)
        stats = RenderStats()
        owner = threading.get_ident()
        latest = {}
        alphas = pipe.scheduler.alphas_cumprod
        prediction_type = pipe.scheduler.config.prediction_type
        guided = options.guidance_scale > 1

        def capture(module, args, kwargs, output):
            # The U-Net is shared between concurrent renders: only count our own thread's calls.
            if threading.get_ident() != owner:
                return
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            stats.unet_evaluations += sample.shape[0]
            if not options.previews:
                return
            out = output[0] if isinstance(output, tuple) else output.sample
            if guided:
                uncond, cond = out.chunk(2)
                out, sample = uncond + options.guidance_scale * (cond - uncond), sample.chunk(2)[1]
            # The U-Net always sees the variance-preserving x_t (Euler-type schedulers scale
            # their input to it), so one formula gives x0 for every scheduler.
            a = alphas[int(round(float(t if not torch.is_tensor(t) else t.flatten()[0])))].to(out.dtype)
            if prediction_type == "v_prediction":
                latest["x0"] = a.sqrt() * sample - (1 - a).sqrt() * out
            else:
                latest["x0"] = (sample - (1 - a).sqrt() * out) / a.sqrt()

        started = last = time.perf_counter()

        def on_step_end(pipeline, i, t, tensors):
            nonlocal last
            now = time.perf_counter()
            stats.step_times_s.append(now - last)
            stats.steps = i + 1
            noisy = self.previewer.to_image(tensors["latents"][-1].cpu())
            # A full VAE decode of x0 can cost half a step of a small model: decode it while the
            # previews stay within their share of the time, and always at the last step.
            last_step = i + 1 == pipeline.num_timesteps
            within_budget = stats.preview_s <= PREVIEW_SHARE * sum(stats.step_times_s)
            x0, decoded = None, False
            if options.previews and "x0" in latest:
                decoded = last_step or within_budget
                x0 = self.decode(latest["x0"]) if decoded else self.previewer.to_image(latest["x0"][-1].cpu(), smooth=True)
            stats.preview_s += time.perf_counter() - now
            emit(StepFrame(i + 1, options.steps, float(t), noisy, x0, now - started, decoded))
            if should_stop is not None and should_stop():
                pipeline._interrupt = True  # diffusers skips the remaining steps
                stats.stopped_by = "cancelled"
            last = time.perf_counter()  # preview time is not counted as step time
            return tensors

        hook = pipe.unet.register_forward_hook(capture, with_kwargs=True)
        try:
            output = pipe(
                prompt,
                negative_prompt=options.negative_prompt or None,
                num_inference_steps=options.steps,
                guidance_scale=options.guidance_scale,
                height=options.height,
                width=options.width,
                generator=torch.Generator().manual_seed(options.seed),
                callback_on_step_end=on_step_end,
                output_type="np",
            )
        finally:
            hook.remove()
        stats.total_s = time.perf_counter() - started
        stats.stopped_by = stats.stopped_by or "done"
        array = output.images[0]
        warnings = check_output(array)
        image = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
        return RenderResult(image=image, stats=stats, warnings=warnings)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """Decode one latent (the x0 preview): the tiny preview decoder if there is one, else the full VAE."""
        return _decode_latents(self.pipe.vae if self.preview_decoder is None else self.preview_decoder, latents[-1:])


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


@functools.lru_cache(maxsize=2)
def _shared_generator(source: str) -> ImageGenerator:
    from .accel import DiffusionPolicy, load_preview_decoder
    from .hub import load_diffusion

    policy = DiffusionPolicy.from_env()
    pipe, ran = load_diffusion(source, policy)
    preview_decoder, preview_ran = load_preview_decoder(policy, pipe, source)
    return ImageGenerator(pipe, source, [*ran, preview_ran], preview_decoder)


def tokenize_prompt(tokenizer, prompt: str) -> tuple[list[str], int]:
    """(tokens, limit): how the diffusion text encoder splits a prompt; tokens past the limit are cut."""
    tokens = tokenizer.tokenize(prompt)
    limit = tokenizer.model_max_length - 2  # start and end markers take two places
    return tokens, limit


def noise_levels(scheduler) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise scales, sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), for every training timestep."""
    alphas = scheduler.alphas_cumprod.double().numpy()
    return np.sqrt(alphas), np.sqrt(1 - alphas)


def _decode_latents(pipe, latents: torch.Tensor) -> Image.Image:
    vae = getattr(pipe, "vae", pipe)  # a pipeline, or a VAE (AutoencoderKL or AutoencoderTiny) itself
    latents = latents.to(vae.device, vae.dtype)
    decoded = vae.decode(latents / vae.config.scaling_factor).sample[0]
    array = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


@dataclass
class NoisingResult:
    noisy: Image.Image  # the image's latent noised to timestep t, decoded
    denoised: Image.Image  # the model's one-step guess of the clean image from that noisy latent
    signal: float  # sqrt(alpha_bar_t)
    noise: float  # sqrt(1 - alpha_bar_t)


def noise_image(pipe, image, timestep: int, seed: int = 0, prompt: str = "") -> NoisingResult:
    """The forward process (encode, noise to t, decode) beside one reverse step (predict x0 from x_t)."""
    if not isinstance(image, Image.Image):
        raise InputError("upload an image file (PNG or JPEG)")
    if image.width * image.height > 4096 * 4096:
        raise InputError(f"the image is {image.width}x{image.height}; the limit is 4096x4096 pixels")
    timestep = _number("timestep", timestep, int)
    total = pipe.scheduler.config.num_train_timesteps
    if not 0 <= timestep < total:
        raise InputError(f"timestep must be between 0 and {total - 1}, got {timestep}")
    seed = _number("seed", seed, int)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = np.asarray(image.convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    a = pipe.scheduler.alphas_cumprod[timestep]
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(pipe.vae.dtype)
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=latents.dtype)
        noisy = pipe.scheduler.add_noise(latents, noise, torch.tensor([timestep]))
        embeddings = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        predicted = pipe.unet(noisy, torch.tensor([timestep]), embeddings).sample
        if pipe.scheduler.config.prediction_type == "v_prediction":
            x0 = a.sqrt() * noisy - (1 - a).sqrt() * predicted
        else:
            x0 = (noisy - (1 - a).sqrt() * predicted) / a.sqrt()
        return NoisingResult(_decode_latents(pipe, noisy), _decode_latents(pipe, x0), math.sqrt(a), math.sqrt(1 - a))
