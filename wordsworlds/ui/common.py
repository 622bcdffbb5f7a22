"""Small pieces every tab shares: turning library errors into messages a person sees."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path

import gradio as gr
from gradio import processing_utils
from gradio.exceptions import InvalidPathError

from ..errors import InputError, ModelUnavailable


@contextlib.contextmanager
def user_errors():
    """Show refused input and missing models as a gr.Error (a toast, not a traceback)."""
    try:
        yield
    except (InputError, ModelUnavailable) as error:
        raise gr.Error(str(error), print_exception=False) from None


def quiet_input_errors(demo: gr.Blocks) -> None:
    """Input that Gradio itself refuses (a value outside a slider's range, a wrong type, a file path the
    app did not hand out) becomes a message naming the input, and no traceback in the server's log:
    the API bypasses the sliders, so such input is expected, not a fault. Set on the instances, as
    local_example_image does."""
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and getattr(block, "label", None):
            block.preprocess = _labelled(block, block.preprocess, block.label)
    preprocess = demo.preprocess_data

    async def checked(block_fn, inputs, state, explicit_call=False):
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error as error:
            raise gr.Error(error.message, print_exception=False) from None
        except InvalidPathError:
            raise gr.Error("that file was not uploaded to this app: upload a picture instead",
                           print_exception=False) from None
        except Exception as error:  # noqa: BLE001  (e.g. a payload that is not the component's data)
            raise gr.Error(f"an input could not be read ({type(error).__name__}); send the values the API "
                           "page lists", print_exception=False) from None

    demo.preprocess_data = checked


def _labelled(block, preprocess, label: str):
    """`block`'s preprocess, refusing what Gradio would coerce (a list turned into the text "[]", a
    seed of 0.5 rounded to 0) and naming the input in every refusal."""
    text = isinstance(block, gr.Textbox)
    whole = isinstance(block, gr.Number) and block.precision == 0

    def labelled(payload):
        if text and payload is not None and not isinstance(payload, str):
            raise gr.Error(f"{label}: must be text, not a {type(payload).__name__}", print_exception=False)
        if whole and isinstance(payload, float) and math.isfinite(payload) and not payload.is_integer():
            raise gr.Error(f"{label}: must be a whole number, got {payload}", print_exception=False)
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{label}: {error.message}", print_exception=False) from None
        except (TypeError, ValueError, AttributeError) as error:
            raise gr.Error(f"{label}: a {type(payload).__name__} is not a value this input takes",
                           print_exception=False) from None

    return labelled


class Pace:
    """When to send a streaming handler's next update: at once for a lone visitor, every PACE_S x (runs
    in the busiest model's batch) seconds in a full room. With fifty phones each gets fewer, fuller
    updates (the tokens gather between two), and the server's time goes to the models rather than to
    messages and picture files (measured: benchmarks/bench_room.py)."""

    PACE_S = 0.03

    def __init__(self, *engines):
        self.engines = engines
        self.last = 0.0

    def due(self) -> bool:
        running = max(engine.running for engine in self.engines)
        now = time.perf_counter()
        if now - self.last >= self.PACE_S * running:
            self.last = now
            return True
        return False


def scroll_into_view(elem_id: str) -> str:
    """Browser-side code for a click: bring the results into view (on a phone they start below the button)."""
    return f"() => {{ document.getElementById('{elem_id}')?.scrollIntoView({{behavior: 'smooth', block: 'start'}}); }}"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def local_example_image(example: str, **kwargs) -> gr.Image:
    """A gr.Image (same arguments) whose API and MCP example is the local file `example`, served by the
    app (`/gradio_api/file=...`), instead of gr.Image's default, an internet URL that an offline machine
    cannot fetch. Set on the instance: a subclass of a Gradio component makes Gradio write a .pyi stub
    beside this module at import."""
    image = gr.Image(**kwargs)
    payload = {"path": example, "url": f"/gradio_api/file={example}", "meta": {"_type": "gradio.FileData"}}
    image.example_payload = lambda: payload
    image.example_value = lambda: example
    return image


def _save_pil_to_cache_atomically(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, written the way Gradio's own save_file_to_cache is:
    an existing copy is reused, and a new one is written under a temporary name and renamed into place.

    Gradio 6.31 rewrites the cached file in place every time the same picture is returned. With
    identical pictures in flight (the same prompt and seed on fifty phones, or an x0 view sent again)
    a browser could read the file while it was being rewritten: a broken image, and "Too little/much
    data for declared Content-Length" in the server log."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if not path.exists():
        handle, staging = tempfile.mkstemp(dir=folder, prefix=".writing-")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    return str(path)


def install_atomic_image_cache() -> None:
    """Make every image output (gr.Image, gr.Gallery) use _save_pil_to_cache_atomically."""
    processing_utils.save_pil_to_cache = _save_pil_to_cache_atomically
