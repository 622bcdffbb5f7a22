"""Acceleration options: each applies on the CPU, or falls back and says why; the image stays the same.

A tiny SD-1.5-layout pipeline (fixtures_tiny.py) runs two steps under each option; the LLM's
static KV cache is checked against the dynamic one on a tiny Llama; ZeroGPU with a stand-in
`spaces` module.
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
from wordsworlds.accel import DiffusionPolicy, apply_diffusion_policies, load_preview_decoder, make_llm_cache

PROMPT = "a red circle on the left"


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
def no_policy_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("WORDSWORLDS_") or n == gpu.ZERO_GPU_ENV]:
        monkeypatch.delenv(name)


def two_steps(pipe, side: int = 64) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, height=side, width=side, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


# ---------------------------------------------------------------- the policy itself


def test_defaults_on_a_cpu_are_fp32_and_change_nothing(tiny_folders, pipe):
    from diffusers import StableDiffusionPipeline

    policy = DiffusionPolicy()
    assert policy.resolved_device() == ("cpu", "") and policy.resolved_dtype() == (torch.float32, "")
    reference = two_steps(StableDiffusionPipeline.from_pretrained(tiny_folders["sd"], safety_checker=None))
    ran = apply_diffusion_policies(pipe, policy)
    assert ran == ["device: cpu", "precision: fp32", "attention: PyTorch SDPA (AttnProcessor2_0)"]
    assert np.array_equal(two_steps(pipe), reference)


def test_from_env_reads_each_named_field(monkeypatch):
    monkeypatch.setenv("WORDSWORLDS_FUSE_QKV", "1")
    monkeypatch.setenv("WORDSWORLDS_ATTENTION", "classic")
    monkeypatch.setenv("WORDSWORLDS_PREVIEW_DECODER", "tiny")
    policy = DiffusionPolicy.from_env()
    assert policy.fuse_qkv and policy.attention == "classic" and policy.preview_decoder == "tiny"
    assert not policy.channels_last and policy.vae_fp32  # the rest keep their defaults


@pytest.mark.parametrize("env, message", [
    ({"WORDSWORLDS_ATTENTION": "flash9"}, "attention"), ({"WORDSWORLDS_PRECISION": "fp8"}, "precision"),
    ({"WORDSWORLDS_COMPILE": "maybe"}, "WORDSWORLDS_COMPILE"), ({"WORDSWORLDS_DEVICE": "tpu"}, "device"),
])
def test_from_env_refuses_unknown_values(env, message):
    with pytest.raises(ValueError, match=message):
        DiffusionPolicy.from_env(env)


def test_fastest_keeps_the_cpu_defaults_that_measured_best():
    assert DiffusionPolicy.fastest("cpu") == DiffusionPolicy(device="cpu")


# ---------------------------------------------------------------- each option applies or falls back


@pytest.mark.parametrize("options, expected", [
    (dict(attention="classic"), "attention: classic (AttnProcessor, plain matmuls)"),
    (dict(fuse_qkv=True), "fused QKV projections (U-Net and VAE)"),
    (dict(channels_last=True), "channels_last memory format (U-Net and VAE)"),
])
def test_speed_ups_keep_the_image(pipe, tiny_folders, options, expected):
    reference = two_steps(pipe)
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(**options))
    assert expected in ran
    assert np.allclose(two_steps(pipe), reference, atol=2e-3)


def test_fused_qkv_replaces_the_attention_processors(pipe):
    apply_diffusion_policies(pipe, DiffusionPolicy(fuse_qkv=True))
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}


def test_channels_last_changes_the_weight_layout(pipe):
    apply_diffusion_policies(pipe, DiffusionPolicy(channels_last=True))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_xformers_falls_back_to_sdpa_with_the_reason(pipe, monkeypatch):
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(attention="xformers"))
    assert "attention: PyTorch SDPA (xformers is not installed)" in ran
    monkeypatch.setattr(accel.importlib.util, "find_spec", lambda name, *a: object())  # "installed"
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(attention="xformers"))
    assert "attention: PyTorch SDPA (xformers kernels need CUDA)" in ran


def test_fusion_is_skipped_under_classic_attention(pipe):
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(attention="classic", fuse_qkv=True))
    assert any(line.startswith("QKV projections not fused") for line in ran)


def test_cuda_asked_without_a_gpu_runs_on_the_cpu(pipe):
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(device="cuda"))
    assert ran[0] == "device: cpu (cuda asked, but there is no GPU here)" and pipe.unet.device.type == "cpu"


def test_fp16_on_a_cpu_falls_back_to_fp32(pipe):
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(precision="fp16"))
    assert ran[1].startswith("precision: fp32 (fp16 asked") and pipe.unet.dtype == torch.float32


def test_bf16_keeps_the_vae_in_fp32_and_the_output_finite(pipe, monkeypatch):
    from wordsworlds.image import check_output

    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(precision="bf16"))
    assert ran[1] == "precision: bf16 (VAE kept in fp32; NaN check on output)"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    image = two_steps(pipe)  # bf16 latents reach the fp32 VAE through its input-casting hooks
    assert image.shape == (64, 64, 3) and check_output(image) == []


def test_bf16_without_native_support_stays_fp32(pipe, monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(precision="bf16"))
    assert "no native bfloat16" in ran[1] and pipe.unet.dtype == torch.float32


def test_a_half_precision_vae_is_reported(pipe, monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(precision="bf16", vae_fp32=False))
    assert "VAE in half precision" in ran[1] and pipe.vae.dtype == torch.bfloat16


def test_nan_output_is_caught_not_shown():
    from wordsworlds.image import RenderError, check_output

    with pytest.raises(RenderError, match="NaN"):
        check_output(np.full((8, 8, 3), np.nan, dtype=np.float32))
    assert "blank" in check_output(np.zeros((8, 8, 3), dtype=np.float32))[0]


def test_vae_tiling_decodes_large_images_in_tiles(pipe):
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(vae_tiling="on"))
    assert "VAE tiling (only above 64 px)" in ran and pipe.vae.use_tiling
    image = two_steps(pipe, side=128)  # 16x16 latents: above the 8x8 tile, so the tiled path runs
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()
    assert "VAE tiling" not in " ".join(apply_diffusion_policies(pipe, DiffusionPolicy()))  # auto: CUDA only


def test_compile_is_lazy_here_and_refused_on_zero_gpu(pipe, monkeypatch):
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "true")
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(compile=True))
    assert ran[-1] == "not compiled (torch.compile does not run on ZeroGPU)"
    monkeypatch.delenv(gpu.ZERO_GPU_ENV)
    monkeypatch.setattr(accel.shutil, "which", lambda name: "/usr/bin/" + name)
    ran = apply_diffusion_policies(pipe, DiffusionPolicy(compile=True))
    assert ran[-1].startswith("torch.compile (U-Net") and isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    assert accel.compile_unet(pipe) == "torch.compile (U-Net, compiled already)"


def test_preview_decoder_options(pipe, tiny_folders):
    from diffusers import AutoencoderTiny

    assert load_preview_decoder(DiffusionPolicy(), pipe) == (None, "x0 previews: full VAE")
    decoder, ran = load_preview_decoder(DiffusionPolicy(preview_decoder=str(tiny_folders["taesd"])), pipe)
    assert isinstance(decoder, AutoencoderTiny) and ran.startswith("x0 previews: tiny decoder")
    from wordsworlds.image import _decode_latents

    assert _decode_latents(decoder, torch.randn(1, 4, 8, 8)).size == (64, 64)
    decoder, ran = load_preview_decoder(DiffusionPolicy(preview_decoder=str(tiny_folders["sd"] / "nothing")), pipe)
    assert decoder is None and ran.startswith("x0 previews: full VAE (tiny decoder")
    decoder, ran = load_preview_decoder(DiffusionPolicy(preview_decoder="tiny"), pipe, "/my/own/model")
    assert decoder is None and ran == "x0 previews: full VAE (no tiny decoder known for the latents of /my/own/model)"


# ---------------------------------------------------------------- the LLM's KV cache


def greedy_logits(model, cache, prompt, new_tokens: int) -> list[torch.Tensor]:
    # The same loop as TextGenerator.stream: the cache goes in at the first call, then rides along.
    with torch.inference_mode():
        output = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        logits = [output.logits[0, -1]]
        for _ in range(new_tokens - 1):
            token = torch.tensor([[int(logits[-1].argmax())]])
            output = model(input_ids=token, past_key_values=output.past_key_values, use_cache=True)
            logits.append(output.logits[0, -1])
    return logits


def test_static_cache_gives_the_same_logits_as_the_dynamic_one(tiny_folders):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llm"]).eval()
    prompt, new = torch.tensor([[3, 17, 42, 8, 99]]), 6
    assert make_llm_cache(model, 11) == (None, "dynamic KV cache")
    cache, ran = make_llm_cache(model, prompt.shape[1] + new, "static")
    assert type(cache).__name__ == "StaticCache" and ran.startswith("static KV cache (11 positions")
    for a, b in zip(greedy_logits(model, None, prompt, new), greedy_logits(model, cache, prompt, new)):
        assert torch.allclose(a, b, atol=1e-5)


def test_static_cache_falls_back_for_models_without_support(tiny_folders, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llm"])
    monkeypatch.setattr(type(model), "_can_compile_fullgraph", False)
    assert make_llm_cache(model, 8, "static")[0] is None
    with pytest.raises(ValueError, match="LLM cache"):
        make_llm_cache(model, 8, "paged")


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
