"""Python's garbage collector in the web process: how long it holds the interpreter while visitors come.

    python benchmarks/bench_gc.py [--sessions 800]

Loads the app and its models as `python app.py` does, then for each setting lets N visitors arrive (each a
Gradio session state, plus a request's worth of short-lived objects) and times every collection. While a
collection runs no stream moves and no request is answered, so the pauses over 100 ms are what the fuzz
benchmark and a room notice. Settings (each in a fresh
process): Python's default; every object alive after loading frozen (`gc.freeze`); frozen with the
young generation collected every 10,000 allocations instead of 700 (`serving.tune_garbage_collector`);
that, with sessions that copy a component's settings only when they change it (`ui/sessions.py`; Gradio's
copy every component's settings at once): what the app does.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"python's default": "", "frozen": "freeze", "frozen, young every 10,000": "tuned",
            "that, and light sessions (the app)": "light"}


def one(setting: str, sessions: int) -> str:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app  # noqa: F401  (builds the Blocks, as the server does)
    from gradio.state_holder import SessionState

    from wordsworlds.models import reports
    from wordsworlds.serving import tune_garbage_collector
    from wordsworlds.ui.sessions import use_light_sessions

    reports(app.preset)
    gc.collect()
    if setting == "freeze":
        gc.freeze()
    elif setting in ("tuned", "light"):
        tune_garbage_collector()
    if setting == "light":
        use_light_sessions()
    pauses, began = [], [0.0]

    def timer(phase, info):
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - began[0]))

    gc.callbacks.append(timer)
    kept, start = [], time.perf_counter()
    for i in range(sessions):
        kept.append(SessionState(app.demo))
        _ = [{"token": [i, str(i)]} for _ in range(2000)]  # a request's short-lived objects
    wall = time.perf_counter() - start
    gc.callbacks.remove(timer)
    full = [p for g, p in pauses if g == 2]
    return (f"{len(pauses)} | {sum(p for _, p in pauses):.2f} | {len(full)} | {max(full, default=0) * 1000:.0f} "
            f"| {sum(p > 0.1 for _, p in pauses)} | {wall:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=800)
    parser.add_argument("--one", choices=list(SETTINGS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(one(args.one, args.sessions))
        return
    print(f"{args.sessions} visitors arriving, web process with the models loaded\n")
    print("| setting | collections | seconds in gc | full collections | longest full, ms | pauses > 100 ms | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, setting in SETTINGS.items():
        row = subprocess.run([sys.executable, __file__, "--one", setting, "--sessions", str(args.sessions)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"| {name} | {row} |", flush=True)


if __name__ == "__main__":
    main()
