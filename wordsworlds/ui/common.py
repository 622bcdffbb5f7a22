"""Small pieces every tab shares: turning library errors into messages a person sees."""

from __future__ import annotations

import contextlib

import gradio as gr

from ..errors import InputError, ModelUnavailable


@contextlib.contextmanager
def user_errors():
    """Show refused input and missing models as a gr.Error (a toast, not a traceback)."""
    try:
        yield
    except (InputError, ModelUnavailable) as error:
        raise gr.Error(str(error), print_exception=False) from None


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
