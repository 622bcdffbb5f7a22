"""Cheap previews of latents: a linear map from latent channels to RGB, fitted to the VAE.

Decoding every step's latent through the VAE would cost as much as the step itself for the
miniature model, so the noisy latent is shown through a 4->3 linear map fitted once, by
least squares, to how the VAE encodes patches of colour (the "latent2rgb" trick
that many diffusion UIs use, here fitted per model instead of hard-coded for SD 1.5).

    >>> previewer = LatentPreviewer.fit(pipe.vae)              # doctest: +SKIP
    >>> previewer.to_image(latents[0]).size                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class LatentPreviewer:
    weights: np.ndarray  # (channels + 1, 3): one row per latent channel, then the bias
    scale: int  # pixels per latent cell, to upscale the preview to the image's size

    @classmethod
    @torch.inference_mode()
    def fit(cls, vae, samples: int = 16, side: int = 8, seed: int = 0) -> "LatentPreviewer":
        """Fit on patchwork images of random colours (one colour per latent cell), encoded by
        the VAE: any model can encode them, and they span the colours a picture can have."""
        channels = vae.config.latent_channels
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        generator = torch.Generator().manual_seed(seed)
        cells = torch.rand(samples, 3, side, side, generator=generator) * 2 - 1
        images = F.interpolate(cells, scale_factor=scale, mode="nearest")
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
        x = latents.float().cpu().permute(0, 2, 3, 1).reshape(-1, channels)
        y = cells.permute(0, 2, 3, 1).reshape(-1, 3)
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        weights = torch.linalg.lstsq(x, y).solution
        return cls(weights.numpy(), scale)

    def to_image(self, latent: torch.Tensor, smooth: bool = False) -> Image.Image:
        """One latent (C, H, W) -> an RGB picture at the image's size: blocky (a latent is a grid
        of cells, and the noisy-latent view shows that) or smoothly upscaled."""
        array = latent.detach().float().cpu().permute(1, 2, 0).numpy()
        rgb = array @ self.weights[:-1] + self.weights[-1]
        rgb = ((np.clip(rgb, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        image = Image.fromarray(rgb)
        size = (image.width * self.scale, image.height * self.scale)
        return image.resize(size, Image.BICUBIC if smooth else Image.NEAREST)
