"""Image tokens: the miniature VAE's 8x8 latent grid, each latent vector replaced by the nearest of
K learnt codes (k-means, as a VQ tokenizer's codebook but fitted after the fact).

    >>> import torch
    >>> tokens = ImageTokenizer(torch.randn(16, 4), grid=8)
    >>> codes = tokens.encode(torch.randn(2, 4, 8, 8))
    >>> codes.shape, tokens.decode(codes).shape
    (torch.Size([2, 64]), torch.Size([2, 4, 8, 8]))

Why k-means over the existing VAE rather than a trained VQ-VAE: the next-token painter and the
miniature Stable Diffusion then share one decoder, so the two worlds lanes differ only in how
they make the latent grid (one code at a time, or all at once by denoising). Fitted on 4,000
drawn scenes, 256 codes keep the checker's exact-scene rate of a VAE round trip (0.957 against
0.967 over 300 scenes; `python -m wordsworlds train --model painter` measures it again).
Codes are read in raster order: row by row, left to right.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "image_tokenizer.json"
CODEBOOK_FILE = "codebook.safetensors"


class ImageTokenizer:
    def __init__(self, codebook: torch.Tensor, grid: int):
        self.codebook = codebook.float()  # [codes, latent channels]
        self.grid = grid

    @property
    def codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def length(self) -> int:
        """Tokens per picture."""
        return self.grid * self.grid

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """[batch, channels, grid, grid] latents -> [batch, grid*grid] code ids, raster order."""
        vectors = latents.float().permute(0, 2, 3, 1).reshape(-1, self.codebook.shape[1])
        codes = torch.cdist(vectors, self.codebook).argmin(-1)
        return codes.reshape(latents.shape[0], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[batch, grid*grid] code ids -> [batch, channels, grid, grid] latents."""
        batch = codes.shape[0]
        return self.codebook[codes].reshape(batch, self.grid, self.grid, -1).permute(0, 3, 1, 2).contiguous()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"codebook": self.codebook.contiguous()}, folder / CODEBOOK_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"codes": self.codes, "grid": self.grid,
                                                      "latent_channels": self.codebook.shape[1]}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "ImageTokenizer":
        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text())
        return cls(load_file(folder / CODEBOOK_FILE)["codebook"], grid=config["grid"])


def fit_image_tokenizer(latents: torch.Tensor, codes: int = 256, seed: int = 0) -> ImageTokenizer:
    """k-means (scikit-learn's MiniBatchKMeans) over every latent vector of `latents`."""
    from sklearn.cluster import MiniBatchKMeans

    vectors = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).numpy()
    kmeans = MiniBatchKMeans(codes, random_state=seed, batch_size=4096, n_init=3).fit(vectors)
    return ImageTokenizer(torch.from_numpy(kmeans.cluster_centers_).float(), grid=latents.shape[-1])
