"""ZeroGPU: borrow a GPU for the length of one call on a ZeroGPU Space, do nothing elsewhere.

On a ZeroGPU Space (the platform sets SPACES_ZERO_GPU=true) the `spaces` package lends a GPU
to each call of a function decorated with `spaces.GPU`, for at most `duration` seconds, and
takes it back when the call returns. `on_gpu` is that decorator there and the identity
everywhere else (a laptop, CI, a CPU or dedicated-GPU Space), so the same code runs in all.

What to decorate: the OUTER function of a request, the one that owns the whole loop (all
the denoising steps, all the tokens, all the rounds of the hybrid loop), so a request holds
the GPU once instead of once per step. A generator may be decorated: each `yield` travels
back to the web process as it comes.

What crosses the boundary: on ZeroGPU the decorated call runs in another process, so its
arguments and everything it returns or yields are pickled. Pass and return plain data, PIL
images and CPU tensors (`.cpu()`); never CUDA tensors, models or open handles, and no
lambdas (a `should_stop` callback cannot be pickled: cancel through Gradio instead).
Models are loaded and moved to "cuda" once at start-up, outside any decorated function
(ZeroGPU defers the move until a GPU is lent); torch.compile does not run there.

    >>> from wordsworlds.gpu import on_gpu
    >>> @on_gpu(duration=60)
    ... def render(prompt: str, steps: int = 20):
    ...     return prompt                         # the whole render; returns PIL images
    >>> render("a red fox")                       # here, not on ZeroGPU: the function itself
    'a red fox'
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set to "true" by the Spaces platform on ZeroGPU hardware
DEFAULT_DURATION = 60  # seconds; the platform's own default. Shorter durations get served sooner.


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the same test the `spaces` package makes)."""
    return os.environ.get(ZERO_GPU_ENV, "").lower() in ("1", "t", "true")


@functools.cache
def _spaces():
    """The `spaces` module when on ZeroGPU and importable, else None (warned once)."""
    if not on_zero_gpu():
        return None
    try:
        import spaces  # an optional extra, present on ZeroGPU Spaces only
    except ImportError:
        warnings.warn(f"${ZERO_GPU_ENV} is set but the `spaces` package is not installed: running without ZeroGPU")
        return None
    return spaces


# `spaces` patches torch when imported and must be imported before CUDA starts, so it is
# imported with this module: import wordsworlds.gpu before any model is moved to "cuda".
_spaces()


def on_gpu(fn: Callable | None = None, *, duration: int | Callable[..., int] = DEFAULT_DURATION):
    """`spaces.GPU(duration=...)` on a ZeroGPU Space, else the function unchanged.

    Use as `@on_gpu` or `@on_gpu(duration=120)`. `duration` is the most seconds one call may
    hold the GPU, or a function of the call's arguments that returns it (e.g. from the number
    of steps), as `spaces.GPU` takes it.
    """

    def decorate(fn: Callable) -> Callable:
        spaces = _spaces()
        if spaces is None:
            return fn
        return spaces.GPU(duration=duration)(fn)

    return decorate(fn) if fn is not None else decorate
