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
"""

from __future__ import annotations

import copy
import os
import warnings

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
