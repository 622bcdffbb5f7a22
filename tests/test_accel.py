"""Acceleration options: each applies on the CPU, or falls back and says why; the image stays the same.

A tiny SD-1.5-layout pipeline (fixtures_tiny.py) runs two steps under each option; the LLM's
precision options on a tiny Llama; ZeroGPU with a stand-in `spaces` module.
"""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch

from fixtures_tiny import save_tiny_llm, save_tiny_sd, save_tiny_taesd
from wordsworlds import accel, gpu
from wordsworlds.accel import Accel, apply_diffusion_policies, optimize_llm
from wordsworlds.models import load_preview_decoder
from wordsworlds.worlds.diffusion import RenderError, check_output, decode_latents

PROMPT = "a red cat on the left"


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-accel")
    return {"sd": save_tiny_sd(root / "sd"), "llm": save_tiny_llm(root / "llm"), "taesd": save_tiny_taesd(root / "taesd")}


@pytest.fixture
def pipe(tiny_folders):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folders["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def not_on_zero_gpu(monkeypatch):
    monkeypatch.delenv(gpu.ZERO_GPU_ENV, raising=False)


def two_steps(pipe, side: int = 64) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, height=side, width=side, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


# ---------------------------------------------------------------- the policy itself


def test_defaults_on_a_cpu_are_fp32_and_change_nothing_but_the_memory_layout(tiny_folders, pipe):
    from diffusers import StableDiffusionPipeline

    policy = Accel()
    assert policy.resolved_device(cuda=False) == ("cpu", "") and policy.resolved_dtype(cuda=False) == (torch.float32, "")
    reference = two_steps(StableDiffusionPipeline.from_pretrained(tiny_folders["sd"], safety_checker=None))
    ran = apply_diffusion_policies(pipe, policy)
    assert ran == ["device: cpu", "precision: fp32", "attention: PyTorch SDPA (AttnProcessor2_0)",
                   "channels_last memory format (U-Net and VAE)"]
    # channels_last sums the convolutions in another order: the same picture to float precision.
    assert np.allclose(two_steps(pipe), reference, atol=1e-5)


# ---------------------------------------------------------------- each option applies or falls back


@pytest.mark.parametrize("options, expected", [
    (dict(attention="classic"), "attention: classic (AttnProcessor, plain matmuls)"),
    (dict(fuse_qkv=True), "fused QKV projections (U-Net and VAE)"),
    (dict(channels_last=True), "channels_last memory format (U-Net and VAE)"),
])
def test_speed_ups_keep_the_image(pipe, tiny_folders, options, expected):
    reference = two_steps(pipe)
    ran = apply_diffusion_policies(pipe, Accel(**options))
    assert expected in ran
    assert np.allclose(two_steps(pipe), reference, atol=2e-3)


def test_fused_qkv_replaces_the_attention_processors(pipe):
    apply_diffusion_policies(pipe, Accel(fuse_qkv=True))
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}


def test_channels_last_changes_the_weight_layout(pipe):
    apply_diffusion_policies(pipe, Accel(channels_last=True))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_xformers_falls_back_to_sdpa_with_the_reason(pipe, monkeypatch):
    ran = apply_diffusion_policies(pipe, Accel(attention="xformers"))
    assert "attention: PyTorch SDPA (xformers is not installed)" in ran
    monkeypatch.setattr(accel.importlib.util, "find_spec", lambda name, *a: object())  # "installed"
    ran = apply_diffusion_policies(pipe, Accel(attention="xformers"))
    assert "attention: PyTorch SDPA (xformers kernels need CUDA)" in ran


def test_fusion_is_skipped_under_classic_attention(pipe):
    ran = apply_diffusion_policies(pipe, Accel(attention="classic", fuse_qkv=True))
    assert any(line.startswith("QKV projections not fused") for line in ran)


def test_cuda_asked_without_a_gpu_runs_on_the_cpu(pipe):
    ran = apply_diffusion_policies(pipe, Accel(device="cuda"))
    assert ran[0] == "device: cpu (cuda asked, but there is no GPU here)" and pipe.unet.device.type == "cpu"


def test_fp16_on_a_cpu_falls_back_to_fp32(pipe):
    ran = apply_diffusion_policies(pipe, Accel(precision="fp16"))
    assert ran[1].startswith("precision: fp32 (fp16 asked") and pipe.unet.dtype == torch.float32


def test_bf16_keeps_the_vae_in_fp32_and_the_output_finite(pipe, monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    ran = apply_diffusion_policies(pipe, Accel(precision="bf16"))
    assert ran[1] == "precision: bf16 (VAE kept in fp32; NaN check on output)"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    image = two_steps(pipe)  # bf16 latents reach the fp32 VAE through its input-casting hooks
    assert image.shape == (64, 64, 3) and check_output(image) == []


def test_bf16_without_native_support_stays_fp32(pipe, monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    ran = apply_diffusion_policies(pipe, Accel(precision="bf16"))
    assert "no native bfloat16" in ran[1] and pipe.unet.dtype == torch.float32


def test_a_recipe_measured_in_bf16_runs_in_it_on_a_cpu_with_native_bfloat16_unless_told_otherwise(monkeypatch):
    from wordsworlds.presets import get_preset

    assert get_preset("tiny").recipe.cpu_bf16 and not get_preset("sd15").recipe.cpu_bf16
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    assert Accel().with_cpu_bf16().precision == "bf16"
    assert Accel(precision="fp32").with_cpu_bf16().precision == "fp32"  # asked for by name: kept
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    assert Accel().with_cpu_bf16().precision == "auto"  # fp32 on this CPU


def test_a_half_precision_vae_is_reported(pipe, monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    ran = apply_diffusion_policies(pipe, Accel(precision="bf16", vae_fp32=False))
    assert "VAE in half precision" in ran[1] and pipe.vae.dtype == torch.bfloat16


def test_nan_output_is_caught_not_shown():
    with pytest.raises(RenderError, match="NaN"):
        check_output(np.full((8, 8, 3), np.nan, dtype=np.float32))
    assert "blank" in check_output(np.zeros((8, 8, 3), dtype=np.float32))[0]


def test_vae_tiling_decodes_large_images_in_tiles(pipe):
    ran = apply_diffusion_policies(pipe, Accel(vae_tiling="on"))
    assert "VAE tiling (only above 64 px)" in ran and pipe.vae.use_tiling
    image = two_steps(pipe, side=128)  # 16x16 latents: above the 8x8 tile, so the tiled path runs
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()
    assert "VAE tiling" not in " ".join(apply_diffusion_policies(pipe, Accel()))  # auto: CUDA only


def test_compile_is_lazy_here_and_refused_on_zero_gpu(pipe, monkeypatch):
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "true")
    ran = apply_diffusion_policies(pipe, Accel(compile=True))
    assert ran[-1] == "not compiled (torch.compile does not run on ZeroGPU)"
    monkeypatch.delenv(gpu.ZERO_GPU_ENV)
    monkeypatch.setattr(accel.shutil, "which", lambda name: "/usr/bin/" + name)
    ran = apply_diffusion_policies(pipe, Accel(compile=True))
    assert ran[-1].startswith("torch.compile (U-Net") and isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    assert accel.compile_unet(pipe) == "torch.compile (U-Net, compiled already)"


def test_preview_decoder_options(pipe, tiny_folders):
    from diffusers import AutoencoderTiny

    assert load_preview_decoder(Accel(), pipe) == (None, "x0 previews: full VAE")
    decoder, ran = load_preview_decoder(Accel(preview_decoder=str(tiny_folders["taesd"])), pipe)
    assert isinstance(decoder, AutoencoderTiny) and ran.startswith("x0 previews: tiny decoder")
    assert decode_latents(decoder, torch.randn(1, 4, 8, 8))[0].size == (64, 64)
    decoder, ran = load_preview_decoder(Accel(preview_decoder=str(tiny_folders["sd"] / "nothing")), pipe)
    assert decoder is None and ran.startswith("x0 previews: full VAE (tiny decoder")
    decoder, ran = load_preview_decoder(Accel(preview_decoder="tiny"), pipe, "/my/own/model")
    assert decoder is None and ran == "x0 previews: full VAE (no tiny decoder known for the latents of /my/own/model)"


# ---------------------------------------------------------------- the LLM's precision on a CPU


def greedy_tokens(model, prompt, new_tokens: int) -> list[int]:
    with torch.inference_mode():
        return model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)[0, prompt.shape[1]:].tolist()


def test_fp32_is_the_model_itself_and_int8_quantizes_every_linear_layer(tiny_folders):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llm"]).eval()
    assert optimize_llm(model, "fp32") == (model, "fp32")
    quantized, ran = optimize_llm(model, "int8")
    linear = sum(type(m).__name__ == "Linear" for m in model.modules())
    assert ran.startswith(f"int8 (dynamic quantization of {linear} Linear layers") and quantized is not model
    assert type(model.lm_head).__module__.startswith("torch.nn")  # the input model is left as it was
    prompt = torch.tensor([[3, 17, 42, 8, 99]])
    assert len(greedy_tokens(quantized, prompt, 4)) == 4


def test_bf16_on_a_cpu_without_native_support_stays_fp32(tiny_folders, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llm"])
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    assert optimize_llm(model, "bf16") == (model, "fp32 (bf16 asked, but this CPU has no native bfloat16)")
    with pytest.raises(ValueError, match="LLM precision"):
        optimize_llm(model, "int4")


# ---------------------------------------------------------------- ZeroGPU


def test_on_gpu_is_the_identity_off_zero_gpu():
    def render(prompt):
        return prompt

    assert gpu.on_gpu(render) is render and gpu.on_gpu(duration=120)(render) is render


def test_on_gpu_is_spaces_gpu_on_zero_gpu(monkeypatch):
    calls = []

    def fake_gpu(duration=None):  # spaces.GPU's keyword form: returns the decorator
        def decorate(fn):
            calls.append(duration)
            return lambda *args, **kwargs: ("on gpu", fn(*args, **kwargs))
        return decorate

    fake = types.ModuleType("spaces")
    fake.GPU = fake_gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "true")
    gpu._spaces.cache_clear()
    try:
        render = gpu.on_gpu(duration=90)(lambda prompt: prompt.upper())
        assert render("fox") == ("on gpu", "FOX") and calls == [90]
        assert gpu.on_gpu(lambda: 1)() == ("on gpu", 1) and calls[-1] == gpu.DEFAULT_DURATION
    finally:
        gpu._spaces.cache_clear()


def test_on_zero_gpu_without_spaces_warns_and_runs_plainly(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "1")
    gpu._spaces.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn = gpu.on_gpu(duration=10)(len)
        assert fn is len and "spaces" in str(caught[0].message)
    finally:
        gpu._spaces.cache_clear()
