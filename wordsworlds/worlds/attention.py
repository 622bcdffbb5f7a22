"""Which words painted which pixels: the U-Net's cross-attention maps, per prompt token, per step.

Every cross-attention layer of a Stable-Diffusion-family U-Net lets each latent cell look at the
prompt's tokens; its weights, softmax(QK^T / sqrt(d)) averaged over heads and summed over
layers, say where each word acts (Hertz et al., 2022, "Prompt-to-Prompt"; Tang et al., 2023,
"What the DAAM"). diffusers computes attention inside fused kernels that never hand the
weights back, so `install` wraps each cross-attention layer's processor (whatever it is:
PyTorch SDPA, xformers): the wrapper returns the wrapped processor's output unchanged and,
only inside `recording(...)` and only for the batch rows asked for, also computes the weights
from the layer's own query and key projections. No library keeps these maps for a batched
step loop, hence this module.

    >>> install(pipe.unet)                                   # doctest: +SKIP
    >>> with recording(rows=[1], latent_size=(8, 8)) as store:   # doctest: +SKIP
    ...     pipe.unet(sample, t, encoder_hidden_states=embeds)
    >>> store.maps().shape          # (rows, context tokens, height, width)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

MAX_MAP_SIDE = 16  # maps are kept at the latent's size, at most this many cells a side (SD 1.5: 64 -> 16)
_local = threading.local()  # the store of the U-Net call running in this thread (the U-Net is shared)
_INSTALL_LOCK = threading.Lock()


class AttentionStore:
    """The cross-attention maps of one U-Net call, for some of its batch rows, summed over layers."""

    def __init__(self, rows: list[int], latent_size: tuple[int, int]):
        self.rows = rows
        height, width = latent_size
        scale = max(1.0, max(height, width) / MAX_MAP_SIDE)
        self.latent_size = (height, width)
        self.size = (max(1, round(height / scale)), max(1, round(width / scale)))
        self.total: torch.Tensor | None = None
        self.layers = 0

    @torch.no_grad()
    def add(self, attn, hidden_states: torch.Tensor, context: torch.Tensor) -> None:
        """One layer's weights for the recorded rows, from its own projections, resized to the common grid."""
        rows = torch.tensor([r % hidden_states.shape[0] for r in self.rows], device=hidden_states.device)
        queries = hidden_states.index_select(0, rows)
        if queries.ndim == 4:  # (b, c, h, w) layers take a flattened grid
            queries = queries.flatten(2).transpose(1, 2)
        context = context.index_select(0, rows)
        if attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(context)
        query, key = attn.to_q(queries), attn.to_k(context)
        batch, cells, _ = query.shape
        query = query.view(batch, cells, attn.heads, -1).transpose(1, 2).float()
        key = key.view(batch, key.shape[1], attn.heads, -1).transpose(1, 2).float()
        if getattr(attn, "norm_q", None) is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        weights = (query @ key.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (rows, cells, tokens)
        height, width = self.latent_size
        down = math.sqrt(height * width / cells)  # this layer's grid is the latent's, downsampled
        grid_h = max(1, round(height / down))
        grid = weights.transpose(1, 2).reshape(batch, -1, grid_h, cells // grid_h)
        grid = F.interpolate(grid, size=self.size, mode="bilinear", align_corners=False)
        self.total = grid if self.total is None else self.total + grid
        self.layers += 1

    def maps(self) -> torch.Tensor | None:
        """(rows, context tokens, height, width): the mean over layers, each token's share of each cell."""
        return None if self.total is None else (self.total / self.layers).cpu()

    def take(self) -> torch.Tensor | None:
        """The maps so far, and a fresh start for the next U-Net call's."""
        maps, self.total, self.layers = self.maps(), None, 0
        return maps


class RecordingProcessor:
    """A cross-attention layer's processor, wrapped: the same output, and the weights when recording."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        output = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        store = getattr(_local, "store", None)
        if store is not None and encoder_hidden_states is not None:
            store.add(attn, hidden_states, encoder_hidden_states)
        return output


def install(unet) -> bool:
    """Wrap every cross-attention processor of `unet` (once; a no-op after). False for a compiled U-Net,
    whose graph the wrapper would break: it records no maps."""
    if hasattr(unet, "_orig_mod"):
        return False
    with _INSTALL_LOCK:
        processors = unet.attn_processors
        if any(isinstance(p, RecordingProcessor) for p in processors.values()):
            return True
        unet.set_attn_processor({name: RecordingProcessor(p) if name.endswith("attn2.processor") else p
                                 for name, p in processors.items()})
    return True


@contextmanager
def recording(rows: list[int], latent_size: tuple[int, int]):
    """Within: the U-Net calls of this thread add the cross-attention maps of batch rows `rows` to the store."""
    store = AttentionStore(rows, latent_size)
    _local.store = store
    try:
        yield store
    finally:
        _local.store = None
