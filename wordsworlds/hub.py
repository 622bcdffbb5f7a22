"""The Hub presets' models: SD 1.5, SD-Turbo and SDXL-Turbo (LCM-LoRA as a few-step option),
the LLMs, the SmolVLM describer, and CLIP text and image embeddings.

Each loader takes a Hub id or a local folder in the same layout, loads once per process, and
applies the acceleration policy (accel.py) with a report of what ran. With
`$WORDSWORLDS_HUB_MIRROR` set, a Hub id found there as `<mirror>/<owner>/<name>` is read from
that folder: how the tests run every preset offline (tiny random models in the real layouts),
and how a machine without Hub access runs the real ones
(`hf download stabilityai/sd-turbo --local-dir $WORDSWORLDS_HUB_MIRROR/stabilityai/sd-turbo`).

    >>> from wordsworlds.hub import clip_embed_texts, describe_image, load_diffusion
    >>> pipe, ran = load_diffusion("stabilityai/sd-turbo")                 # doctest: +SKIP
    >>> ran                                                                # doctest: +SKIP
    ('device: cuda', 'precision: float16 (VAE kept in fp32; NaN check on output)', ...)
    >>> image = pipe("a red fox in the snow", num_inference_steps=1, guidance_scale=0).images[0]  # doctest: +SKIP
    >>> describe_image(image)                                              # doctest: +SKIP
    'A red fox standing in the snow.'
    >>> clip_embed_texts(["dog", "puppy", "banana"]).shape                 # doctest: +SKIP
    (3, 768)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .accel import NAMES, DiffusionPolicy, apply_diffusion_policies
from .text import InputError

MIRROR_ENV = "WORDSWORLDS_HUB_MIRROR"
FEW_STEP_ENV = "WORDSWORLDS_FEW_STEP"
FEW_STEP_OPTIONS = ("", "lcm-lora")
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")  # the families the step stream knows

# Few-step adapters (Luo et al., 2023, "LCM-LoRA"): a LoRA distilled for 2-8 steps with LCMScheduler,
# per base model (SD-Turbo and SDXL-Turbo are few-step already; SD-Turbo's SD 2.1 U-Net would not fit).
LCM_LORAS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "latent-consistency/lcm-lora-sdv1-5",
}
# Tiny distilled decoders (TAESD) for cheap per-step previews, per latent space: SD 1.x and 2.x
# share one VAE; SDXL has its own. (The shapes world's VAE has none: its previews use the full VAE.)
PREVIEW_DECODERS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "madebyollin/taesd",
    "stabilityai/sd-turbo": "madebyollin/taesd",
    "stabilityai/sdxl-turbo": "madebyollin/taesdxl",
}
# Ids published with half-precision weight files (`variant="fp16"`: half the download).
FP16_VARIANTS = {"stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/sd-turbo", "stabilityai/sdxl-turbo"}


@dataclass(frozen=True)
class DiffusionRecipe:
    """How a checkpoint is meant to be run, as its authors publish it."""

    steps: int
    guidance_scale: float
    size: int
    scheduler: str  # a key of image.SCHEDULERS


RECIPES = {
    # The seed's snippet runs 50 PNDM steps at guidance 7.5; DPM++ reaches the same in about 25.
    "stable-diffusion-v1-5/stable-diffusion-v1-5": DiffusionRecipe(25, 7.5, 512, "dpm++"),
    # Adversarial diffusion distillation (Sauer et al., 2023): 1-4 steps, no guidance, 512 px.
    "stabilityai/sd-turbo": DiffusionRecipe(1, 0.0, 512, "euler"),
    "stabilityai/sdxl-turbo": DiffusionRecipe(1, 0.0, 512, "euler"),
}
LCM_RECIPE = DiffusionRecipe(4, 1.0, 512, "lcm")  # guidance 1: no second U-Net pass


def recipe_for(source: str, few_step: str = "") -> DiffusionRecipe | None:
    """The published settings for a Hub id (None for a folder of unknown origin)."""
    if few_step == "lcm-lora" and source in LCM_LORAS:
        return LCM_RECIPE
    return RECIPES.get(source)


def resolve_source(source: str) -> str:
    """The local folder for `source` if the mirror holds it, else `source` unchanged."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and not Path(source).is_absolute() and source.count("/") == 1:
        folder = Path(mirror) / source
        if folder.is_dir():
            return str(folder)
    return source


# ---------------------------------------------------------------- diffusion


def pipeline_class(source: str):
    """The diffusers class for the pipeline at `source`, from its model_index.json."""
    import diffusers

    folder = resolve_source(source)
    if Path(folder).is_dir() or Path(folder).is_absolute() or folder.startswith("."):
        index = Path(folder) / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
        name = json.loads(index.read_text())["_class_name"]
    else:
        name = diffusers.DiffusionPipeline.load_config(folder)["_class_name"]
    if name not in PIPELINES:
        raise ValueError(f"{source} is a {name}; the step-by-step engine runs {' and '.join(PIPELINES)}")
    return getattr(diffusers, name)


def _fp16_variant(source: str, folder: str, dtype: torch.dtype) -> str | None:
    if dtype != torch.float16:
        return None
    if Path(folder).is_dir():
        return "fp16" if any(Path(folder).glob("unet/*.fp16.*")) else None
    return "fp16" if source in FP16_VARIANTS else None


def load_diffusion(source: str, policy: DiffusionPolicy | None = None, few_step: str | None = None):
    """(pipeline, what ran): an SD or SDXL pipeline with the policy applied, shared per process.

    `policy` defaults to `DiffusionPolicy.from_env()`. `few_step="lcm-lora"` (default
    `$WORDSWORLDS_FEW_STEP`) fuses the family's LCM-LoRA into the U-Net and switches to
    LCMScheduler; `recipe_for` gives the settings it wants.
    """
    few_step = os.environ.get(FEW_STEP_ENV, "") if few_step is None else few_step
    if few_step not in FEW_STEP_OPTIONS:
        choices = ", ".join(map(repr, FEW_STEP_OPTIONS))
        raise ValueError(f"unknown few-step option {few_step!r}; choose one of {choices}")
    return _load_diffusion(source, policy or DiffusionPolicy.from_env(), few_step)


@functools.lru_cache(maxsize=2)
def _load_diffusion(source: str, policy: DiffusionPolicy, few_step: str):
    cls = pipeline_class(source)
    folder = resolve_source(source)
    dtype, _ = policy.resolved_dtype()
    kwargs = {"dtype": dtype, "variant": _fp16_variant(source, folder, dtype)}
    if cls.__name__ == "StableDiffusionPipeline":
        kwargs |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    ran = []
    if few_step == "lcm-lora":
        # Before the policies: a LoRA targets the separate Q, K, V projections that fusion replaces.
        ran.append(load_lcm_lora(pipe, source))
    ran[:0] = apply_diffusion_policies(pipe, policy)
    return pipe, tuple(ran)


def load_lcm_lora(pipe, diffusion: str, lora: str | None = None) -> str:
    """Fuse the LCM-LoRA made for `diffusion` (a Hub id) into the U-Net and switch to LCMScheduler;
    return what ran. `lora` overrides which LoRA (a Hub id or folder)."""
    from diffusers import LCMScheduler

    source = lora or LCM_LORAS.get(diffusion)
    if source is None:
        return f"LCM-LoRA not loaded: none is published for {diffusion}; the model's own scheduler kept"
    if importlib.util.find_spec("peft") is None:
        return "LCM-LoRA not loaded: diffusers loads LoRAs through the peft package (pip install peft)"
    pipe.load_lora_weights(resolve_source(source), adapter_name="lcm")
    # Fused into the weights and the adapter layers removed: the U-Net runs as fast as without it.
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    recipe = LCM_RECIPE
    return f"LCM-LoRA {source} fused into the U-Net; LCMScheduler ({recipe.steps} steps, guidance {recipe.guidance_scale:g})"


# ---------------------------------------------------------------- the LLM


def load_llm(source: str, policy: DiffusionPolicy | None = None):
    """(model, tokenizer, what ran) for a Hub id or folder, on the policy's device (fp16/bf16 on CUDA).

    On the CPU the LLM precision options of accel.optimize_llm apply instead (int8 by default).
    """
    from .models import load_causal_lm

    policy = policy or DiffusionPolicy.from_env()
    device, note = policy.resolved_device()
    dtype = policy.resolved_dtype()[0] if device == "cuda" else torch.float32
    model, tokenizer = load_causal_lm(resolve_source(source), dtype)
    model.to(device)
    return model, tokenizer, f"{note or device}, {NAMES[dtype]}"


# ---------------------------------------------------------------- the describer (SmolVLM)

DESCRIBE_PROMPT = "Describe this picture in one sentence."
MAX_DESCRIPTION_TOKENS = 96


def load_describer(source: str, policy: DiffusionPolicy | None = None):
    """(model, processor) of a vision-language model (SmolVLM: Idefics3ForConditionalGeneration)."""
    return _load_describer(source, policy or DiffusionPolicy.from_env())


@functools.lru_cache(maxsize=1)
def _load_describer(source: str, policy: DiffusionPolicy):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device, _ = policy.resolved_device()
    dtype = policy.resolved_dtype()[0] if device == "cuda" else torch.float32
    folder = resolve_source(source)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, processor


def _image(image) -> Image.Image:
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4):
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise InputError("the describer needs an image (PNG or JPEG)")
    if image.width * image.height > 4096 * 4096:
        raise InputError(f"the image is {image.width}x{image.height}; the limit is 4096x4096 pixels")
    return image.convert("RGB")


@torch.inference_mode()
def describe_image(image, source: str | None = None, prompt: str = DESCRIBE_PROMPT,
                   max_new_tokens: int = MAX_DESCRIPTION_TOKENS) -> str:
    """One sentence about the picture, greedy, from the preset's vision-language describer."""
    from .presets import get_preset

    image = _image(image)
    model, processor = load_describer(source or get_preset().describer)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    # One tile: the processor's default (longest side 4 x 512 px, cut into 512-px tiles) reads a
    # 512-px render as 17 images, 1088 tokens for SmolVLM-256M; the global view alone is 64 and
    # is enough to say what a generated picture shows.
    tile = processor.image_processor.max_image_size["longest_edge"]
    inputs = processor(text=text, images=[image], size={"longest_edge": tile}, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ---------------------------------------------------------------- CLIP: text and images in one space


@functools.lru_cache(maxsize=2)
def load_clip(source: str):
    """(CLIPModel, CLIPProcessor) on the CPU: a few hundred words or thumbnails need no GPU."""
    from transformers import CLIPModel, CLIPProcessor

    folder = resolve_source(source)
    return CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)


def _clip_source(source: str | None) -> str:
    from .presets import get_preset

    source = source or get_preset().clip
    if not source:
        raise InputError("this preset has no CLIP model (the tiny preset uses the diffusion text encoder instead)")
    return source


def _features(output) -> torch.Tensor:
    # transformers 5 returns the model output with the projected embedding as pooler_output; 4 returned the tensor.
    features = output if torch.is_tensor(output) else output.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


@torch.inference_mode()
def clip_embed_texts(texts: list[str], source: str | None = None, batch: int = 64) -> np.ndarray:
    """One unit-length row per text in CLIP's joint space (cosine = dot product)."""
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("give a list of texts to embed")
    model, processor = load_clip(_clip_source(source))
    rows = []
    for start in range(0, len(texts), batch):
        inputs = processor(text=list(texts[start:start + batch]), padding=True, truncation=True, return_tensors="pt")
        rows.append(_features(model.get_text_features(**inputs)))
    return torch.cat(rows).numpy()


@torch.inference_mode()
def clip_embed_images(images: list, source: str | None = None, batch: int = 32) -> np.ndarray:
    """One unit-length row per image, in the same space as clip_embed_texts."""
    images = [_image(image) for image in images]
    if not images:
        raise InputError("give a list of images to embed")
    model, processor = load_clip(_clip_source(source))
    rows = []
    for start in range(0, len(images), batch):
        inputs = processor(images=images[start:start + batch], return_tensors="pt")
        rows.append(_features(model.get_image_features(**inputs)))
    return torch.cat(rows).numpy()
