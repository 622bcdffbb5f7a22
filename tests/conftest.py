"""Shared fixtures: offline always, one model load per test session, the app on loopback."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def text_generator():
    from wordsworlds.text import TextGenerator

    return TextGenerator.load(preset="tiny")


@pytest.fixture(scope="session")
def app_client():
    """The whole app, launched once on loopback, driven through gradio_client."""
    from gradio_client import Client

    import app

    port = free_port()
    app.demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.demo.close()
