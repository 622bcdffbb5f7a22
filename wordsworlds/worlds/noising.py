"""Inside the diffusion model: how its tokenizer reads a prompt, and the forward noising process
beside one reverse step.

The forward process is the training one, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise,
applied by DDPMScheduler.add_noise, which indexes the schedule by the training timestep itself.
(A DPM-Solver scheduler's add_noise looks t up in its sampling timesteps, which run from
999 down to 0 until set_timesteps is called: it noised t=999 least and t=0 most.)

    >>> from wordsworlds.worlds.noising import noise_image
    >>> result = noise_image(pipe, image, timestep=999)       # doctest: +SKIP
    >>> round(result.signal, 2)                               # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from ..errors import check_image, check_number, check_prompt, check_seed
from .diffusion import decode_latents

def tokenize_prompt(tokenizer, prompt: str) -> tuple[list[str], int]:
    """(tokens, limit): how the diffusion text encoder splits a prompt; tokens past the limit are cut."""
    tokens = tokenizer.tokenize(check_prompt(prompt))
    limit = tokenizer.model_max_length - 2  # start and end markers take two places
    return tokens, limit


def noise_levels(scheduler) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise scales, sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), for every training timestep."""
    alphas = scheduler.alphas_cumprod.double().numpy()
    return np.sqrt(alphas), np.sqrt(1 - alphas)


@dataclass
class NoisingResult:
    noisy: Image.Image  # the image's latent noised to timestep t, decoded
    denoised: Image.Image  # the model's one-step guess of the clean image from that noisy latent
    signal: float  # sqrt(alpha_bar_t)
    noise: float  # sqrt(1 - alpha_bar_t)


@torch.inference_mode()
def noise_image(pipe, image, timestep: int, seed: int = 0, prompt: str = "") -> NoisingResult:
    """The forward process (encode, noise to t, decode) beside one reverse step (predict x0 from x_t).
    Every tensor is made on, or moved to, the device of the module that reads it."""
    image = check_image(image)
    total = pipe.scheduler.config.num_train_timesteps
    timestep = check_number("timestep", timestep, int, 0, total - 1)
    seed = check_seed(seed)
    forward = DDPMScheduler.from_config(pipe.scheduler.config)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = np.asarray(image.resize((side, side), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    vae, unet = pipe.vae, pipe.unet
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(vae.device, vae.dtype)
    latents = (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).to(unet.device, unet.dtype)
    # The noise is drawn on the CPU from the seed (the same picture on every device), then moved.
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents.device, latents.dtype)
    a = forward.alphas_cumprod[timestep].item()  # read before add_noise moves the schedule to the device
    t = torch.tensor([timestep], device=latents.device)
    noisy = forward.add_noise(latents, noise, t)
    embeddings = pipe.encode_prompt(prompt, unet.device, 1, False)[0]
    predicted = unet(noisy, t, embeddings).sample
    if pipe.scheduler.config.prediction_type == "v_prediction":
        x0 = math.sqrt(a) * noisy - math.sqrt(1 - a) * predicted
    else:
        x0 = (noisy - math.sqrt(1 - a) * predicted) / math.sqrt(a)
    return NoisingResult(decode_latents(vae, noisy)[0], decode_latents(vae, x0)[0], math.sqrt(a), math.sqrt(1 - a))
