"""Small pieces every tab shares: turning library errors into messages a person sees."""

from __future__ import annotations

import contextlib

import gradio as gr
from gradio_client import handle_file

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

from gradio.events import Dependency

class LocalExampleImage(gr.Image):
    """An image input whose API and MCP example is one of the app's own pictures, served by the app
    (`/gradio_api/file=...`), not gr.Image's default, an internet URL that an offline machine cannot fetch."""

    is_template = True  # drawn by the frontend as a plain gr.Image
    example = ""  # the picture's path, set by local_example_image

    def example_payload(self):
        return {"path": self.example, "url": f"/gradio_api/file={self.example}", "meta": {"_type": "gradio.FileData"}}

    def example_value(self):
        return self.example
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component