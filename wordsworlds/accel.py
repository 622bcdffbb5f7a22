"""Speed-ups as named options: each has a capability check, a plain fallback, and reports what ran.

`Accel` holds every option, one field each; it travels inside the preset (presets.py) from the
entry points down to the loaders (models.py), which apply it. The defaults are safe and keep
the models' quality; every speed-up is asked for by name and measured in `benchmarks/`.

The LLM on a CPU (`llm_precision`):
- "fp32": the default and the reference.
- "bf16": half the bytes per weight; needs a CPU with native bfloat16 (AVX512-BF16/AMX),
  otherwise PyTorch emulates it and it gets slower, so it falls back to fp32.
- "int8": dynamic int8 quantization of every nn.Linear. Faster on a CPU, but it changed what
  SmolLM2-135M says ("What is 2 plus 2?" -> "2"), so it is an option, never the default.
On CUDA the LLM runs in the GPU precision (`precision`: bf16 where the GPU has it, else fp16).

Diffusion pipelines (SD, SDXL): device, precision (fp16/bf16 with the VAE kept in fp32),
attention (PyTorch SDPA by default, xformers when installed, classic), channels_last, fused
QKV projections, torch.compile (never on ZeroGPU), VAE tiling, a tiny decoder (TAESD) for the
per-step previews, and LCM-LoRA as a few-step option. `benchmarks/bench_sd15.py` measures them.

    >>> from wordsworlds.accel import Accel, apply_diffusion_policies
    >>> apply_diffusion_policies(pipe, Accel(fuse_qkv=True))  # doctest: +SKIP
    ['device: cpu', 'precision: fp32', 'attention: PyTorch SDPA (AttnProcessor2_0)', 'fused QKV projections (U-Net and VAE)']
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from .errors import InputError
from .gpu import on_zero_gpu

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LLM_PRECISIONS = ("fp32", "bf16", "int8")
ATTENTION_BACKENDS = ("sdpa", "xformers", "classic")
TILING = ("auto", "on", "off")
FEW_STEP = ("", "lcm-lora")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
ENV_PREFIX = "WORDSWORLDS_"


def cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"${ENV_PREFIX}{name.upper()} must be 1 or 0, got {value!r}")


@dataclass(frozen=True)
class Accel:
    """How the models run; each field a named option with a check and a fallback.

    The defaults are safe: fp32 on a CPU; on CUDA half precision with the VAE kept in fp32
    (SDXL's VAE overflows in fp16) and PyTorch's SDPA attention; channels_last (same pictures,
    faster). The other speed-ups below are off unless asked for.
    """

    device: str = "auto"  # "auto": CUDA when there is one, else the CPU
    # "auto": fp16 (diffusion) / bf16 or fp16 (LLM) on CUDA, fp32 on the CPU (bf16 for a model whose recipe says
    # it keeps its quality there, on a CPU with native bfloat16: with_cpu_bf16)
    precision: str = "auto"
    llm_precision: str = "fp32"  # the LLM on a CPU: fp32, bf16 or int8 (see the module docstring)
    attention: str = "sdpa"  # "sdpa" (PyTorch's fused kernels), "xformers" (an optional extra), "classic" (matmuls)
    vae_fp32: bool = True  # under fp16/bf16, keep the VAE in fp32 and feed it cast latents
    # NHWC memory layout for the convolutions: on by default. Measured on the 2-core CPU, offline preset: a
    # 20-step render 1.08 s -> 0.75 s, the U-Net at batch 100 0.45 s -> 0.40 s; pictures within one grey level.
    channels_last: bool = True
    fuse_qkv: bool = False  # one matmul for Q, K and V in self-attention (K and V in cross-attention)
    compile: bool = False  # torch.compile the U-Net; slow first call, never on ZeroGPU
    vae_tiling: str = "auto"  # "auto": on for CUDA; decodes in tiles only above the VAE's native size
    preview_decoder: str = ""  # "": the full VAE for x0 previews; "tiny": TAESD; or a folder/Hub id
    few_step: str = ""  # "lcm-lora": fuse the model's LCM-LoRA and sample in 4 steps
    batching: bool = True  # concurrent requests share each step's forward pass (serving.py); off: each runs alone
    engine_process: bool = True  # batched, the engines run in a process of their own (engines.py); off: threads

    def __post_init__(self):
        for name, allowed in (("device", DEVICES), ("precision", PRECISIONS), ("llm_precision", LLM_PRECISIONS),
                              ("attention", ATTENTION_BACKENDS), ("vae_tiling", TILING), ("few_step", FEW_STEP)):
            if getattr(self, name) not in allowed:
                choices = ", ".join(repr(a) if not a else a for a in allowed)
                raise InputError(f"unknown {name} {getattr(self, name)!r}; choose one of {choices}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "Accel":
        """Each field from $WORDSWORLDS_<FIELD> (e.g. WORDSWORLDS_FUSE_QKV=1), else its default.
        Called by the entry points only (presets.from_environment)."""
        values = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _flag(raw, field.name) if field.type in (bool, "bool") else raw.strip()
        return cls(**values)

    def with_cpu_bf16(self) -> "Accel":
        """This policy for a model measured to keep its quality in bfloat16 (a preset's `Recipe.cpu_bf16`):
        "auto" precision becomes bf16 on a CPU with native bfloat16; anything else is left as it is."""
        if self.precision == "auto" and self.resolved_device()[0] == "cpu" and cpu_has_native_bf16():
            return replace(self, precision="bf16")
        return self

    def resolved_device(self, cuda: bool | None = None) -> tuple[str, str]:
        """(the device that will run, a note when it is not the one asked for).
        `cuda`: whether a GPU is present (default: ask torch); tests pass True to check the GPU path."""
        cuda = torch.cuda.is_available() if cuda is None else cuda
        if self.device == "cpu" or (self.device == "auto" and not cuda):
            return "cpu", ""
        if not cuda:
            return "cpu", "cpu (cuda asked, but there is no GPU here)"
        return "cuda", ""

    def resolved_dtype(self, cuda: bool | None = None) -> tuple[torch.dtype, str]:
        """(dtype for the U-Net and text encoders, a note when it is not the one asked for)."""
        device, _ = self.resolved_device(cuda)
        if self.precision == "auto":
            return (torch.float16 if device == "cuda" else torch.float32), ""
        if device == "cpu" and self.precision == "fp16":
            return torch.float32, "fp32 (fp16 asked, but half-precision convolutions on a CPU are slow or missing)"
        if device == "cpu" and self.precision == "bf16" and not cpu_has_native_bf16():
            return torch.float32, "fp32 (bf16 asked, but this CPU has no native bfloat16)"
        if device == "cuda" and self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            return torch.float16, "fp16 (bf16 asked, but this GPU has no bfloat16)"
        return DTYPES[self.precision], ""

    def llm_dtype(self, cuda: bool | None = None) -> torch.dtype:
        """The dtype an LLM (or a vision-language describer) is loaded in: half precision on CUDA
        (bf16 where the GPU has it: these models were trained in it, and fp16 can overflow),
        fp32 on a CPU (where `llm_precision` then applies, see optimize_llm)."""
        device, _ = self.resolved_device(cuda)
        if device == "cpu":
            return torch.float32
        if self.precision in ("fp32", "fp16"):
            return DTYPES[self.precision]
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def optimize_llm(model, precision: str = "fp32") -> tuple[torch.nn.Module, str]:
    """Return (model, what ran) for a model on the CPU. The input model is left as it was."""
    if precision not in LLM_PRECISIONS:
        raise InputError(f"unknown LLM precision {precision!r}; choose one of {', '.join(LLM_PRECISIONS)}")
    if precision == "fp32":
        return model, "fp32"
    if precision == "bf16":
        if not cpu_has_native_bf16():
            return model, "fp32 (bf16 asked, but this CPU has no native bfloat16)"
        return copy.deepcopy(model).to(torch.bfloat16), "bf16"
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
    if engine is None:
        return model, "fp32 (int8 asked, but this PyTorch has no quantized CPU engine)"
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    layers = sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in quantized.modules())
    return quantized, f"int8 (dynamic quantization of {layers} Linear layers, {engine} engine)"


def _cast_to_weights(module, args, kwargs):
    # Forward pre-hook: fp16 latents into an fp32 VAE. Casting here, at the module, serves the
    # pipeline's own decode, VAE tiling and our previews alike, without touching any of them.
    dtype = next(module.parameters()).dtype
    cast = lambda x: x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def apply_diffusion_policies(pipe, policy: Accel | None = None) -> list[str]:
    """Apply `policy` to a loaded SD/SDXL pipeline in place; return what actually ran, one line per option."""

    policy = policy or Accel()
    device, note = policy.resolved_device()
    ran = [f"device: {note or device}"]
    dtype, note = policy.resolved_dtype()
    half = dtype != torch.float32
    if pipe.unet.dtype != dtype:  # usually loaded in it already (from_pretrained(dtype=...)): no copy then
        pipe.to(dtype=dtype)
    if pipe.unet.device.type != device:
        pipe.to(device)
    vae = pipe.vae
    if half and policy.vae_fp32:
        vae.to(torch.float32)
        for module in (getattr(vae, "post_quant_conv", None), vae.decoder, getattr(vae, "quant_conv", None),
                       vae.encoder):
            if module is not None and not getattr(module, "_casts_inputs", False):
                module.register_forward_pre_hook(_cast_to_weights, with_kwargs=True)
                module._casts_inputs = True
        ran.append(f"precision: {note or NAMES[dtype]} (VAE kept in fp32; NaN check on output)")
    elif half:
        # SDXL's pipeline upcasts a force_upcast VAE for each decode and casts it back after: two
        # renders sharing the VAE can then catch it mid-cast. Hence vae_fp32 as the default.
        upcast = vae.config.get("force_upcast") and "XL" in type(pipe).__name__
        upcast = ", upcast per decode by the pipeline" if upcast else ""
        ran.append(f"precision: {note or NAMES[dtype]} (VAE in half precision{upcast}; NaN check on output)")
    else:
        ran.append(f"precision: {note or 'fp32'}")

    attention = policy.attention
    if attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            attention, reason = "sdpa", "xformers is not installed"
        elif device != "cuda":
            attention, reason = "sdpa", "xformers kernels need CUDA"
        else:
            try:
                pipe.enable_xformers_memory_efficient_attention()
                ran.append("attention: xformers memory-efficient")
            except Exception as error:  # a wheel built for another torch or CUDA: fall back, say why
                attention, reason = "sdpa", f"xformers failed: {str(error).splitlines()[0][:120]}"
        if attention == "sdpa":
            ran.append(f"attention: PyTorch SDPA ({reason})")
    if attention in ("sdpa", "classic"):
        sdpa = attention == "sdpa" and hasattr(torch.nn.functional, "scaled_dot_product_attention")
        for model in (pipe.unet, vae):
            model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
        if policy.attention != "xformers":
            ran.append("attention: PyTorch SDPA (AttnProcessor2_0)" if sdpa
                       else "attention: classic (AttnProcessor, plain matmuls)")

    if policy.fuse_qkv:
        if attention == "sdpa" and hasattr(pipe, "fuse_qkv_projections"):
            try:
                pipe.fuse_qkv_projections(unet=True, vae=type(vae).__name__ == "AutoencoderKL")
                ran.append("fused QKV projections (U-Net and VAE)")
            except ValueError as error:
                ran.append(f"QKV projections not fused ({error})")
        else:
            ran.append(f"QKV projections not fused (fusion needs the SDPA processor; attention is {attention})")

    if policy.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        ran.append("channels_last memory format (U-Net and VAE)")

    tiling = policy.vae_tiling == "on" or (policy.vae_tiling == "auto" and device == "cuda")
    if tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
        ran.append(f"VAE tiling (only above {vae.config.sample_size} px)")

    if policy.compile:
        ran.append(compile_unet(pipe))
    return ran


def compile_unet(pipe) -> str:
    """torch.compile the U-Net in place, where it can run; return what ran."""
    if isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule):
        return "torch.compile (U-Net, compiled already)"
    if on_zero_gpu():
        return "not compiled (torch.compile does not run on ZeroGPU)"
    if pipe.unet.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "not compiled (torch.compile on a CPU needs a C++ compiler)"
    # A wrapper, not unet.compile(): the engine's forward hooks then stay outside the compiled
    # graph, so adding and removing them per render does not force a recompilation.
    pipe.unet = torch.compile(pipe.unet)
    return "torch.compile (U-Net; compiles on the first call, again for each new shape)"
