"""From Words to Worlds: a Gradio demo of how an LLM and a diffusion model differ and work together.

    python app.py            # http://127.0.0.1:7860, the offline `tiny` preset
    WORDSWORLDS_PRESET=sd-turbo python app.py

Layout and wiring only: see wordsworlds/ui/ for the tabs and wordsworlds/ for the models. The
preset (and every WORDSWORLDS_* setting) is read here, once, and passed down.
"""

import os
import sys

import uvicorn

import wordsworlds.gpu  # noqa: F401  (first: on ZeroGPU, `spaces` must be imported before CUDA starts)
from wordsworlds.errors import InputError, ModelUnavailable
from wordsworlds.presets import from_environment
from wordsworlds.ui import CSS, build_demo, warm_up
from wordsworlds.ui.serve import create_app

try:
    preset = from_environment(os.environ)
except InputError as error:  # a misspelt WORDSWORLDS_* setting: one line, not a traceback
    sys.exit(f"error: {error}")
demo = build_demo(preset)

if __name__ == "__main__":
    try:
        warm_up(preset)
    except ModelUnavailable as error:
        sys.exit(f"error: {error}\n(check a deployment with: python -m wordsworlds doctor)")
    uvicorn.run(create_app(demo, css=CSS), host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                access_log=False)  # a line per request: fifty phones fetching every frame would flood the console
