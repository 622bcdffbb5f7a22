"""Speed-ups as named options: each has a capability check, a plain fallback, and reports what ran.

LLM precision on the CPU (`WORDSWORLDS_LLM_PRECISION`):
- "fp32": the reference.
- "bf16": half the bytes per weight; needs a CPU with native bfloat16 (AVX512-BF16/AMX),
  otherwise PyTorch emulates it and it gets slower, so it falls back to fp32.
- "int8": dynamic int8 quantization of every nn.Linear (weights int8, activations quantized
  on the fly). Decoding one token reads every weight once, so on a CPU it is bound by memory
  traffic and Python overhead, not arithmetic: a quarter of the bytes should pay.

    >>> from wordsworlds.accel import optimize_llm
    >>> model, report = optimize_llm(model, "int8")        # doctest: +SKIP
    >>> report                                              # doctest: +SKIP
    'int8 (dynamic quantization of 211 Linear layers, x86 engine)'

The LLM's KV cache (`WORDSWORLDS_LLM_CACHE`): "dynamic" (default) or "static" (make_llm_cache).

Diffusion pipelines (SD, SDXL): a `DiffusionPolicy`, one field per option, each also read from
`WORDSWORLDS_<FIELD>` by `DiffusionPolicy.from_env()`: device, precision (fp16/bf16 with the
VAE kept in fp32), attention (PyTorch SDPA by default, xformers when installed, classic),
channels_last, fused QKV projections, torch.compile (never on ZeroGPU), VAE tiling, and a
tiny decoder (TAESD) for the per-step previews. `benchmarks/bench_sd15.py` measures them.

    >>> from wordsworlds.accel import DiffusionPolicy, apply_diffusion_policies
    >>> apply_diffusion_policies(pipe, DiffusionPolicy(fuse_qkv=True))  # doctest: +SKIP
    ['device: cpu', 'precision: fp32', 'attention: PyTorch SDPA (AttnProcessor2_0)', 'fused QKV projections (U-Net and VAE)']
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass, fields, replace

import torch

LLM_PRECISIONS = ("fp32", "bf16", "int8")
LLM_PRECISION_ENV = "WORDSWORLDS_LLM_PRECISION"


def cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_llm_precision() -> str:
    return os.environ.get(LLM_PRECISION_ENV, "int8")


def optimize_llm(model, precision: str | None = None) -> tuple[torch.nn.Module, str]:
    """Return (model, what ran). The input model is left as it was."""
    precision = precision or default_llm_precision()
    if precision not in LLM_PRECISIONS:
        raise ValueError(f"unknown LLM precision {precision!r}; choose one of {', '.join(LLM_PRECISIONS)}")
    on_gpu = next(model.parameters()).is_cuda
    if precision == "fp32":
        return model, "fp32"
    if precision == "bf16":
        if not on_gpu and not cpu_has_native_bf16():
            return model, "fp32 (bf16 asked, but this CPU has no native bfloat16)"
        return copy.deepcopy(model).to(torch.bfloat16), "bf16"
    if on_gpu:
        return model, "fp32 (int8 dynamic quantization is a CPU path)"
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


# ---------------------------------------------------------------- the LLM's KV cache

LLM_CACHES = ("dynamic", "static")
LLM_CACHE_ENV = "WORDSWORLDS_LLM_CACHE"


def make_llm_cache(model, max_cache_len: int, kind: str | None = None):
    """(cache or None, what ran) for a token-by-token loop.

    "dynamic" (None: the model makes a DynamicCache that grows by one row per token) is the
    default. "static" preallocates keys and values for `max_cache_len` positions
    (transformers' StaticCache, what `cache_implementation="static"` makes inside `generate`):
    fixed shapes are what let torch.compile and CUDA graphs capture the decode step once; on
    its own, eager and on a CPU, it saves only the re-allocation and attends over the whole
    preallocated length, so it is not faster there. The engine's loop (text.py) passes the
    cache as `past_key_values` at the first call and reuses `output.past_key_values` after,
    which works unchanged for both kinds.
    """
    kind = kind or os.environ.get(LLM_CACHE_ENV, "dynamic")
    if kind not in LLM_CACHES:
        raise ValueError(f"unknown LLM cache {kind!r}; choose one of {', '.join(LLM_CACHES)}")
    if kind == "dynamic":
        return None, "dynamic KV cache"
    if not getattr(model, "_can_compile_fullgraph", False):
        return None, f"dynamic KV cache (static asked, but {type(model).__name__} does not support a static cache)"
    from transformers import StaticCache

    parameter = next(model.parameters())
    try:
        cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    except (TypeError, ValueError) as error:  # an architecture whose layers the static cache cannot describe
        return None, f"dynamic KV cache (static cache failed: {error})"
    dtype = NAMES.get(parameter.dtype, parameter.dtype)
    return cache, f"static KV cache ({max_cache_len} positions, {dtype} on {parameter.device.type})"


# ---------------------------------------------------------------- diffusion pipelines

DEVICES = ("auto", "cpu", "cuda")
DIFFUSION_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ATTENTION_BACKENDS = ("sdpa", "xformers", "classic")
TILING = ("auto", "on", "off")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
ENV_PREFIX = "WORDSWORLDS_"


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"${ENV_PREFIX}{name.upper()} must be 1 or 0, got {value!r}")


@dataclass(frozen=True)
class DiffusionPolicy:
    """How a diffusion pipeline runs; each field a named option with a check and a fallback.

    The defaults are safe: fp32 on a CPU; on CUDA fp16 with the VAE kept in fp32 (SDXL's VAE
    overflows in fp16) and PyTorch's SDPA attention. The speed-ups below are off unless asked
    for, and `benchmarks/bench_sd15.py` measures each.
    """

    device: str = "auto"  # "auto": CUDA when there is one, else the CPU
    precision: str = "auto"  # "auto": fp16 on CUDA, fp32 on the CPU
    attention: str = "sdpa"  # "sdpa" (PyTorch's fused kernels), "xformers" (an optional extra), "classic" (matmuls)
    vae_fp32: bool = True  # under fp16/bf16, keep the VAE in fp32 and feed it cast latents
    channels_last: bool = False  # NHWC memory layout for the convolutions (tensor cores like it)
    fuse_qkv: bool = False  # one matmul for Q, K and V in self-attention (K and V in cross-attention)
    compile: bool = False  # torch.compile the U-Net; slow first call, never on ZeroGPU
    vae_tiling: str = "auto"  # "auto": on for CUDA; decodes in tiles only above the VAE's native size
    preview_decoder: str = ""  # "": the full VAE for x0 previews; "tiny": TAESD; or a folder/Hub id

    def __post_init__(self):
        for name, allowed in (("device", DEVICES), ("precision", DIFFUSION_PRECISIONS),
                              ("attention", ATTENTION_BACKENDS), ("vae_tiling", TILING)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")

    @classmethod
    def from_env(cls, environ=None) -> "DiffusionPolicy":
        """Each field from $WORDSWORLDS_<FIELD> (e.g. WORDSWORLDS_FUSE_QKV=1), else its default."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _flag(raw, field.name) if field.type in (bool, "bool") else raw.strip()
        return cls(**values)

    @classmethod
    def fastest(cls, device: str = "auto", compile: bool = False) -> "DiffusionPolicy":
        """The speed-ups that keep the image and pay on `device` (benchmarks/bench_sd15.py measures them).

        On CUDA: channels_last and fused QKV on PyTorch's SDPA (the GPU figures are still to be
        taken here; diffusers' own guide measures these on SD-class U-Nets; xformers, which
        cannot be fused, stays a separate option). On a CPU neither paid (channels_last 0.93x,
        fused QKV 1.0x, 128 px, one thread), so there it keeps the defaults.
        """
        policy = cls(device=device, compile=compile)
        if policy.resolved_device()[0] == "cpu":
            return policy
        return replace(policy, channels_last=True, fuse_qkv=True)

    def resolved_device(self) -> tuple[str, str]:
        """(the device that will run, a note when it is not the one asked for)."""
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            return "cpu", ""
        if not torch.cuda.is_available():
            return "cpu", "cpu (cuda asked, but there is no GPU here)"
        return "cuda", ""

    def resolved_dtype(self) -> tuple[torch.dtype, str]:
        """(dtype for the U-Net and text encoders, a note when it is not the one asked for)."""
        device, _ = self.resolved_device()
        if self.precision == "auto":
            return (torch.float16 if device == "cuda" else torch.float32), ""
        if device == "cpu" and self.precision == "fp16":
            return torch.float32, "fp32 (fp16 asked, but half-precision convolutions on a CPU are slow or missing)"
        if device == "cpu" and self.precision == "bf16" and not cpu_has_native_bf16():
            return torch.float32, "fp32 (bf16 asked, but this CPU has no native bfloat16)"
        if device == "cuda" and self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            return torch.float16, "fp16 (bf16 asked, but this GPU has no bfloat16)"
        return DTYPES[self.precision], ""


def _cast_to_weights(module, args, kwargs):
    # Forward pre-hook: fp16 latents into an fp32 VAE. Casting here, at the module, serves the
    # pipeline's own decode, VAE tiling and our previews alike, without touching any of them.
    dtype = next(module.parameters()).dtype
    cast = lambda x: x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def apply_diffusion_policies(pipe, policy: DiffusionPolicy | None = None) -> list[str]:
    """Apply `policy` to a loaded SD/SDXL pipeline in place; return what actually ran, one line per option."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    policy = policy or DiffusionPolicy()
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
    from .gpu import on_zero_gpu

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


def load_preview_decoder(policy: DiffusionPolicy, pipe, diffusion: str = ""):
    """(AutoencoderTiny or None, what ran): a distilled decoder (TAESD) for the per-step x0 previews.

    TAESD decodes in about 1/100 of the full VAE's arithmetic, so a preview at every step costs
    little; the final image still goes through the full VAE. A tiny decoder is trained for one
    latent space, so "tiny" picks it by the diffusion model's Hub id (`diffusion`); a folder or
    Hub id in `policy.preview_decoder` is taken as is.
    """
    choice = policy.preview_decoder
    if not choice:
        return None, "x0 previews: full VAE"
    from diffusers import AutoencoderTiny

    from .hub import PREVIEW_DECODERS, resolve_source

    if choice == "tiny":
        choice = PREVIEW_DECODERS.get(diffusion)
        if choice is None:
            return None, f"x0 previews: full VAE (no tiny decoder known for the latents of {diffusion or 'this model'})"
    try:
        decoder = AutoencoderTiny.from_pretrained(resolve_source(choice))
    except (OSError, ValueError) as error:
        return None, f"x0 previews: full VAE (tiny decoder {choice!r} not loaded: {str(error).splitlines()[0][:120]})"
    unet = pipe.unet
    decoder.to(unet.device, unet.dtype).eval()
    return decoder, f"x0 previews: tiny decoder {choice}"
