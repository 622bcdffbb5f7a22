"""Image tokens: the miniature VAE's 16x16x8 latents as an 8x8 grid of codes, by a small VQ model.

    >>> import torch
    >>> tokens = ImageTokenizer(build_vq(TokenizerConfig.toy(), latent_channels=8, latent_size=16))
    >>> codes = tokens.encode(torch.randn(2, 8, 16, 16))
    >>> codes.shape, tokens.decode(codes).shape
    (torch.Size([2, 64]), torch.Size([2, 8, 16, 16]))

The next-token painter writes these codes one at a time; the miniature Stable Diffusion's own VAE
turns the latents they decode to into pixels. So the two worlds lanes differ in how they make the
latent grid (code by code, or all at once by denoising), not in how it is drawn.

Why a learnt tokenizer (diffusers' `VQModel`, trained on the VAE's latents) rather than k-means over
the latents as the shapes world had: k-means codes of the 16x16x8 latents, read back by the
recognizer (300 scenes, the VAE alone 0.933), kept 0.703 / 0.803 / 0.837 of scenes with 256 / 512 /
1024 codes at one code per latent pixel (256 tokens a picture, four times the painter's work), and
0.140 / 0.143 / 0.173 with 512 / 1024 / 2048 codes per 2x2 block (64 tokens). A VQ model's encoder
sees each block's neighbourhood and its decoder fills in what a code alone cannot say.
Codes are read in raster order: row by row, left to right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import VQModel

TOKENIZER_FOLDER = "image_tokenizer"  # inside the painter's folder: a diffusers VQModel


@dataclass
class TokenizerConfig:
    codes: int = 1024
    code_dim: int = 16  # a low-dimensional codebook is used more evenly than one as wide as the network
    channels: tuple = (64, 128)  # one downsampling: 16x16 latents -> 8x8 codes

    @classmethod
    def toy(cls) -> "TokenizerConfig":
        return cls(codes=8, code_dim=4, channels=(32, 32))


def build_vq(config: TokenizerConfig, latent_channels: int, latent_size: int, scaling_factor: float = 1.0) -> VQModel:
    """`scaling_factor`: the VAE's, so the VQ model reads and writes latents of unit variance."""
    return VQModel(
        in_channels=latent_channels, out_channels=latent_channels, sample_size=latent_size,
        down_block_types=("DownEncoderBlock2D",) * len(config.channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.channels),
        block_out_channels=config.channels, layers_per_block=1, latent_channels=config.code_dim,
        num_vq_embeddings=config.codes, vq_embed_dim=config.code_dim, norm_num_groups=32,
        scaling_factor=scaling_factor,
    )


class ImageTokenizer:
    """VAE latents <-> code ids, through a VQModel."""

    def __init__(self, vq: VQModel):
        self.vq = vq.eval()

    @property
    def codes(self) -> int:
        return self.vq.config.num_vq_embeddings

    @property
    def grid(self) -> int:
        """Codes per side."""
        return self.vq.config.sample_size // 2 ** (len(self.vq.config.block_out_channels) - 1)

    @property
    def length(self) -> int:
        """Tokens per picture."""
        return self.grid * self.grid

    def pre_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """[batch, channels, H, W] VAE latents -> the encoder's output, before the codebook lookup."""
        return self.vq.encode(latents * self.vq.config.scaling_factor).latents

    @torch.no_grad()
    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """[batch, channels, H, W] VAE latents -> [batch, grid*grid] code ids, raster order."""
        *_, (_, _, ids) = self.vq.quantize(self.pre_codes(latents))
        return ids.reshape(latents.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[batch, grid*grid] code ids -> [batch, channels, H, W] VAE latents."""
        shape = (codes.shape[0], self.grid, self.grid, self.vq.config.vq_embed_dim)
        quantized = self.vq.quantize.get_codebook_entry(codes.reshape(-1), shape)
        return self.vq.decode(quantized, force_not_quantize=True).sample / self.vq.config.scaling_factor

    def save(self, folder: str | Path) -> None:
        self.vq.save_pretrained(Path(folder) / TOKENIZER_FOLDER)

    @classmethod
    def load(cls, folder: str | Path) -> "ImageTokenizer":
        return cls(VQModel.from_pretrained(Path(folder) / TOKENIZER_FOLDER))
