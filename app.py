"""From Words to Worlds: a Gradio demo of how an LLM and a diffusion model differ and work together.

    python app.py            # http://127.0.0.1:7860, the offline `tiny` preset
    WORDSWORLDS_PRESET=sd-turbo python app.py

Layout and wiring only: see wordsworlds/ui/ for the tabs and wordsworlds/ for the models.
"""

import os

import gradio as gr

import wordsworlds.gpu  # noqa: F401  (first: on ZeroGPU, `spaces` must be imported before CUDA starts)
from wordsworlds.ui import CSS, build_demo, warm_up

demo = build_demo()

if __name__ == "__main__":
    warm_up()
    # A room of phones at once: queue requests, several handlers at a time.
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        theme=gr.themes.Soft(),
        css=CSS,
    )
