"""Worlds engine benchmark: Stable Diffusion 1.5 as the seed's snippet runs it, then optimized.

    python benchmarks/bench_sd15.py                          # CUDA: 512x512, 50 steps, guidance 7.5, batch 1
    python benchmarks/bench_sd15.py --compile                # ... plus a torch.compile row (not on ZeroGPU)
    python benchmarks/bench_sd15.py --size 128 --steps 4     # CPU: a small run in fp32, under two minutes

No download: the U-Net, VAE and CLIP text encoder are built from SD 1.5's published configs
(written out below) with random weights. Speed depends on the architecture, the shapes and
the kernels, not on the values of the weights. The tokenizer is a small CLIP BPE learnt here;
its vocabulary size changes nothing that is measured (the embedding table keeps 49,408 rows).

Rows, one pipeline throughout (each change applied on top of the last):
1. the seed's snippet as written: `StableDiffusionPipeline(..., fp16).to("cuda")`, diffusers'
   default attention processor, its PNDM scheduler (fp32 on a CPU: no fp16 convolutions there);
2. classic attention (AttnProcessor, plain matmuls): what PyTorch 2's SDPA replaced, for scale;
3. the acceleration policies of accel.py, one at a time on top of each other: channels_last
   (with the VAE kept in fp32 under fp16), fused QKV projections, xformers when installed;
4. with `--compile`, the same plus torch.compile of the U-Net (first call excluded);
and each at a few-step setting (4 steps, guidance 0, Euler "trailing": how SD-Turbo runs).
it/s counts denoising steps per second (one step = one U-Net call, on a batch of 2 with
guidance); s/image is the whole call: text encoding, the steps, the VAE decode.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from wordsworlds.accel import Accel, apply_diffusion_policies, compile_unet  # noqa: E402
from wordsworlds.world.components import build_tokenizer  # noqa: E402

PROMPT = "A robot coding on a laptop in space, digital art"  # the seed's prompt

# stable-diffusion-v1-5/stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json
# (the text encoder is openai/clip-vit-large-patch14's text tower), scheduler/scheduler_config.json.
UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215,
)
TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)


def build_pipeline() -> StableDiffusionPipeline:
    """SD 1.5's components at full size with random weights, fp32 on the CPU (as from_pretrained leaves them)."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer([PROMPT, "a photo of a cat"], max_length=77)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET), scheduler=PNDMScheduler.from_config(SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def render(pipe, size: int, steps: int, guidance_scale: float, device: str) -> tuple[float, float, bool]:
    """(steps per second over the denoising loop, seconds for the whole call, finite output)."""
    marks = []

    def on_step_end(pipeline, i, t, tensors):
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return tensors

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end, output_type="np").images
    if device == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    # Step 1 begins after text encoding: time it from the end of step 1 when there are more steps.
    loop = marks[-1] - marks[0] if len(marks) > 1 else marks[0] - start
    its = (len(marks) - 1) / loop if len(marks) > 1 else 1 / loop
    return its, total, bool(np.isfinite(images).all())


def measure(pipe, size, steps, guidance_scale, device, repeats) -> tuple[float, float, bool]:
    render(pipe, size, 2 if device == "cuda" else 1, guidance_scale, device)  # warm-up: kernels chosen, caches filled, compiles done
    runs = [render(pipe, size, steps, guidance_scale, device) for _ in range(repeats)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), all(r[2] for r in runs))


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512 if cuda else 128)
    parser.add_argument("--steps", type=int, default=50 if cuda else 4)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--few-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3 if cuda else 1)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (slow first call)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if cuda else "cpu")
    parser.add_argument("--classic", action="store_true", help="add the classic-attention row on a CPU too")
    args = parser.parse_args()
    device = args.device
    started = time.perf_counter()

    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # The seed's snippet: fp16, .to("cuda"), nothing else. A CPU has no fast fp16 convolutions: fp32 there.
    if device == "cuda":
        pipe.to(device, torch.float16)
    built = time.perf_counter() - started
    hardware = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    dtype = "fp16" if device == "cuda" else "fp32"
    print(f"SD 1.5 architecture, random weights (built in {built:.0f} s); {hardware}; torch {torch.__version__}")
    print(f"{args.size}x{args.size}, batch 1; full: {args.steps} steps, guidance {args.guidance_scale:g}, PNDM; "
          f"few-step: {args.few_steps} steps, guidance 0, Euler trailing; median of {args.repeats}\n")

    pndm = pipe.scheduler
    euler = EulerDiscreteScheduler.from_config(pndm.config, timestep_spacing="trailing")
    rows = []

    def run(name: str) -> None:
        for label, scheduler, steps, guidance in (("full", pndm, args.steps, args.guidance_scale),
                                                  ("few-step", euler, args.few_steps, 0.0)):
            pipe.scheduler = scheduler
            its, seconds, finite = measure(pipe, args.size, steps, guidance, device, args.repeats)
            rows.append((name, label, steps, guidance, its, seconds, finite))

    run(f"seed snippet ({dtype}, default attention)")
    if device == "cuda" or args.classic:
        default_processors = pipe.unet.attn_processors
        pipe.unet.set_attn_processor(AttnProcessor())
        run(f"classic attention ({dtype}, plain matmuls)")
        pipe.unet.set_attn_processor(default_processors)
    # The optimized path one option at a time, each on top of the last (what the GPU speed-ups
    # turns on for CUDA; on a CPU it keeps the defaults, because of what these rows show there).
    policy = Accel(device=device, channels_last=True)
    steps = [("+ channels_last" + (", VAE in fp32" if device == "cuda" else ""), policy),
             ("+ fused QKV (SDPA)", replace(policy, fuse_qkv=True))]
    if importlib.util.find_spec("xformers"):
        steps.append(("+ xformers instead of fused SDPA", replace(policy, attention="xformers", fuse_qkv=True)))
    for name, policy in steps:
        ran = apply_diffusion_policies(pipe, policy)
        run(name)
    if args.compile:
        ran.append(compile_unet(pipe))
        run("+ torch.compile (U-Net)")

    print(f"{'configuration':<42}{'setting':<10}{'steps':>6}{'cfg':>5}{'it/s':>9}{'s/image':>9}{'x seed':>8}  output")
    seed = {label: seconds for name, label, *_, seconds, _ in rows if name.startswith("seed")}
    for name, label, steps, guidance, its, seconds, finite in rows:
        print(f"{name:<42}{label:<10}{steps:>6}{guidance:>5g}{its:>9.2f}{seconds:>9.3f}"
              f"{seed[label] / seconds:>8.2f}  {'ok' if finite else 'NaN'}")
    print("\nthe last row ran: " + "; ".join(ran))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
