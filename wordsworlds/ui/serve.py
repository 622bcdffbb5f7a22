"""The web server: the Gradio app mounted on FastAPI, plus the web component's loader script.

A blog embeds the app either in an iframe or as the `<gradio-app>` web component. The component
needs a `gradio.js` script; the public CDN copy is not always reachable (and never on these
offline machines), so the app serves its own, from the Gradio package it runs: `/gradio.js`
loads the same frontend bundle the app's own page loads (`/assets/...`), so the version always
matches. The app is also an MCP server (`/gradio_api/mcp/`), so an assistant can call
`generate_text`, `render_image` and `run_hybrid` as tools.

    >>> app = create_app(build_demo(preset))          # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=7860)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import Response

from ..errors import MAX_UPLOAD
from ..serving import CAPACITY
from .sessions import use_light_sessions

MAX_THREADS = 2 * CAPACITY + 40  # the words and worlds loops full, and room for every other event
# Gradio keeps each visitor's session (its gr.State values, such as a run's record for the replay) for the
# 10,000 latest visitors unless told otherwise; the app keeps the 256 latest, so a room's records cannot
# pile up in memory over a day of visitors. A visitor whose session was dropped (256 newer ones since its
# last click) gets its State back at the defaults: a replay then asks for a new run. (Gradio's sessions
# also copied every component's settings, about 1,200 objects each, which every full garbage collection
# walked; ui/sessions.py makes that copy lazy.)
SESSIONS_KEPT = 256
QUEUE_SIZE = 64  # events waiting for a thread (the explorer and hybrid tabs run two at a time)

WEB_COMPONENT_LOADER = Path(gr.__file__).parent / "templates" / "frontend" / "gradio.js"


def create_app(demo: gr.Blocks, css: str = "", theme=None) -> FastAPI:
    """A FastAPI app serving `demo` at / (queued for a room of phones), /gradio.js, and MCP."""
    app = FastAPI()
    loader = WEB_COMPONENT_LOADER.read_text()  # one line: import("./assets/index-<hash>.js");

    @app.get("/gradio.js", include_in_schema=False)
    def web_component() -> Response:
        return Response(loader, media_type="text/javascript", headers={"Access-Control-Allow-Origin": "*"})

    demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)
    # Every request the engines admit holds a worker thread while it streams, and Gradio runs at most
    # `max_threads` jobs at once (40 unless launch() is told otherwise; a mounted app sets it here).
    demo.max_threads = demo._queue.max_thread_count = MAX_THREADS
    demo.state_session_capacity = SESSIONS_KEPT
    use_light_sessions()  # a visitor's session copies a component's settings only when it changes them
    return gr.mount_gradio_app(app, demo, path="/", mcp_server=True, theme=theme or gr.themes.Soft(), css=css,
                               max_file_size=MAX_UPLOAD)
