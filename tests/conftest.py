"""Shared fixtures: offline always, one model load per test session, the app on loopback."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from wordsworlds.presets import get_preset  # noqa: E402

TINY = get_preset("tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny():
    """The offline preset, as the app runs it by default."""
    return TINY


@pytest.fixture(scope="session")
def text_generator():
    from wordsworlds.words.next_token import TextGenerator

    return TextGenerator.load(TINY)


@pytest.fixture(scope="session")
def app_client():
    """The whole app, launched once on loopback, driven through gradio_client."""
    from gradio_client import Client

    from wordsworlds.ui import build_demo

    demo = build_demo(TINY)
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def run_cli(capsys, *argv, environ=None) -> tuple[int, str, str]:
    """`python -m wordsworlds ...` in this process (models stay loaded): (exit code, stdout, stderr)."""
    from wordsworlds.__main__ import main

    code = main(list(argv), environ={} if environ is None else environ)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
