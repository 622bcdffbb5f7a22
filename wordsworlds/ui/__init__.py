"""The Gradio layer: one module per tab, layout and wiring only; the work lives in wordsworlds/.

Each tab is a small class built with the preset, whose methods are the handlers: a method's
name is its API endpoint (`/generate_text`, `/render_image`, `/compare`, `/run_hybrid`, ...).

    >>> from wordsworlds.presets import get_preset
    >>> from wordsworlds.ui import build_demo
    >>> demo = build_demo(get_preset("tiny"))      # doctest: +SKIP
"""

from __future__ import annotations

import gradio as gr

from ..engines import engine_process, served_apart
from ..errors import ModelUnavailable
from ..models import reports
from ..presets import Preset
from ..serving import tune_garbage_collector
from ..words.captions import Captioner
from ..worlds.diffusion import ImageGenerator
from .common import install_atomic_image_cache, quiet_input_errors
from .explorer import ExplorerTab
from .hybrid import HybridTab
from .side_by_side import WordsVsWorldsTab

TITLE = "From Words to Worlds"
CSS = """
.ww-header {text-align: center}
.ww-header h1 {margin: 0.2em 0 0 0}
.ww-header p {margin: 0.2em 0}
footer {display: none !important}
/* The miniature model paints 64x64: show it large enough for a phone, with crisp pixels. */
.ww-pixels img {image-rendering: pixelated; width: 100% !important; height: 100% !important; object-fit: contain}
/* Phones: the three pictures stay on one row, so picture and text share the first screen. */
.ww-images {flex-wrap: nowrap !important}
.ww-images > * {min-width: 0 !important}
.ww-caption p, .ww-meter p {margin: 0.2em 0}
/* The caption lanes: words as compact chips, so a caption fits a phone's half width in a few lines. */
.ww-words .textfield {padding: 4px 6px !important; line-height: 1.35}
.ww-words .token {padding: 0 3px !important; margin: 1px 1px !important}
.ww-words .token-container {margin: 0 !important}
@media (max-width: 640px) {
  .ww-header p {font-size: 0.85em}
  /* On a phone the first screen is for the prompt and the outputs: explanations wait below. */
  .ww-intro, .ww-more {display: none}
  .gradio-container {padding-left: 6px !important; padding-right: 6px !important}
  /* Three tabs in one row, one tap each (wider buttons went behind a "more" menu). */
  .tab-wrapper button {padding-left: 8px !important; padding-right: 8px !important; font-size: 14px !important}
  .ww-words .textfield {font-size: 13px}
  .ww-run-row {flex-wrap: nowrap !important}
  /* The replay's four pictures: two by two. */
  .ww-replay-pictures {flex-direction: row !important; flex-wrap: wrap !important}
  .ww-replay-pictures > * {flex: 1 1 40% !important; min-width: 40% !important}
}
"""


def running_on(preset: Preset) -> str:
    """The "running on" line: each role's model, device, dtype and speed-ups in force."""
    try:
        lines = [report.line() for report in reports(preset)]
    except ModelUnavailable as error:
        return f"Not every model of the preset could be loaded: {error}"
    return "\n".join(f"- {line}" for line in lines)


def build_demo(preset: Preset) -> gr.Blocks:
    install_atomic_image_cache()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            "How a language model and a diffusion model differ, and how they work together.",
            elem_classes="ww-header",
        )
        # Short tab names: all three fit a phone's width, one tap each.
        with gr.Tab("Words vs worlds"):
            WordsVsWorldsTab(preset).build()
        with gr.Tab("Embeddings"):
            ExplorerTab(preset).build()
        with gr.Tab("Hybrid"):
            HybridTab(preset).build()
        with gr.Accordion(f"Running on: preset {preset.name} ({preset.hardware})", open=False):
            report = gr.Markdown()
        demo.load(lambda: running_on(preset), outputs=report, api_visibility="private")
    quiet_input_errors(demo)
    return demo


def warm_up(preset: Preset) -> None:
    """Load the preset's models before the first visitor arrives (the first GGUF start converts
    for ~25 s with a progress bar in the console; later starts read the cache), and start the
    engine process tab 1 streams from (engines.py), which loads its own copies meanwhile."""
    engines = engine_process(preset) if served_apart(preset) else None
    reports(preset)  # every role: the LLM, diffusion, the meaning encoder, the describer
    # What this process's own handlers use (the noising view, the tokens view, the blanks' parser): on a
    # first call each took 0.15-0.3 s to set up, and a hostile call waited for that before its refusal.
    ImageGenerator.load(preset)
    Captioner.load(preset, "masked_diffusion")
    if engines is not None:
        engines.wait_ready()
    tune_garbage_collector()
