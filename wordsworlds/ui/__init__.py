"""The Gradio layer: one module per tab. Layout and wiring only; the work lives in wordsworlds/."""

from __future__ import annotations

import gradio as gr

from ..presets import get_preset

TITLE = "From Words to Worlds"
CSS = """
.ww-header {text-align: center}
footer {display: none !important}
/* The miniature model paints 64x64: show it large enough for a phone, with crisp pixels. */
.ww-pixels img {image-rendering: pixelated; width: 100% !important; height: 100% !important; object-fit: contain}
"""


def build_demo() -> gr.Blocks:
    from . import explorer, hybrid, side_by_side

    preset = get_preset()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            "How a language model and a diffusion model differ, and how they work together. "
            f"Preset **{preset.name}** ({preset.hardware}).",
            elem_classes="ww-header",
        )
        with gr.Tab("Words vs worlds"):
            side_by_side.build()
        with gr.Tab("Embedding explorer"):
            explorer.build()
        with gr.Tab("Hybrid pipeline"):
            hybrid.build()
    return demo


def warm_up() -> None:
    """Load every model of the preset before the first visitor arrives (the first GGUF start
    converts for ~25 s with a progress bar in the console; later starts read the cache)."""
    from ..describe import shared_recognizer
    from ..image import ImageGenerator
    from ..text import TextGenerator

    TextGenerator.load()
    ImageGenerator.load()
    if get_preset().describer == "shapes-recognizer":
        shared_recognizer()
