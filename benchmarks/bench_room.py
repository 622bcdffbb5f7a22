"""A room of phones at once: N concurrent clients against the app on loopback.

    python benchmarks/bench_room.py [--clients 10 25 50] [--burst]

Starts the app as `python app.py` serves it (in this process, on a free port), then for each N
fires N `gradio_client` clients at once at `/compare`, `/generate_text` and `/render_image` (each
client its own prompt and seed), and prints, per endpoint and N: how many finished, the first
visible output and the finish time (p50 / p95 seconds), jobs per minute, refusals and errors, and
the server's resident memory. `--burst` adds a burst of twice the queue's size at `/render_image`.
The figures depend on what else runs on the machine: say so beside them.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import uvicorn  # noqa: E402
from gradio_client import Client  # noqa: E402

from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.ui import CSS, build_demo, warm_up  # noqa: E402
from wordsworlds.ui.serve import create_app  # noqa: E402

QUEUE_SIZE = 64  # ui/serve.py's max_size
SCENES = ["a large red circle on the left", "a small blue square on the right", "a big yellow triangle at the top",
          "a small green square in the middle and a large purple circle below", "a large orange circle at the bottom"]


def arguments(endpoint: str, index: int) -> tuple:
    prompt, seed = SCENES[index % len(SCENES)], index
    if endpoint == "/generate_text":
        return prompt, 32, 0, 0, 1, seed
    if endpoint == "/render_image":
        return prompt, 20, 5.0, "", seed, "dpm++"
    return prompt, 32, 0, 0, 1, 20, 5.0, "", seed, "dpm++"


def one_client(url: str, endpoint: str, index: int, rows: list) -> None:
    started = time.perf_counter()
    first = done = None
    try:
        job = Client(url, verbose=False).submit(*arguments(endpoint, index), api_name=endpoint)
        while not job.done():
            if first is None and job.outputs():
                first = time.perf_counter() - started
            time.sleep(0.05)
        job.result()
        done = time.perf_counter() - started
        first = done if first is None else first
        rows.append(("ok", first, done, ""))
    except Exception as error:  # noqa: BLE001  (counted and reported)
        text = str(error)
        rows.append(("refused" if "full" in text.lower() else "error", None, time.perf_counter() - started, text[:80]))


def percentile(values: list[float], share: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(share * (len(values) - 1))))] if values else float("nan")


def load(url: str, endpoint: str, clients: int) -> dict:
    rows: list = []
    threads = [threading.Thread(target=one_client, args=(url, endpoint, i, rows)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ok = [r for r in rows if r[0] == "ok"]
    refused = [r for r in rows if r[0] == "refused"]
    return {
        "endpoint": endpoint, "clients": clients, "ok": len(ok),
        "first": (percentile([r[1] for r in ok], 0.5), percentile([r[1] for r in ok], 0.95)),
        "done": (percentile([r[2] for r in ok], 0.5), percentile([r[2] for r in ok], 0.95)),
        "per_minute": len(ok) / wall * 60, "refused": len(refused),
        "refused_within": max((r[2] for r in refused), default=0.0),
        "errors": sorted({r[3] for r in rows if r[0] == "error"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--endpoints", nargs="+", default=["/compare", "/generate_text", "/render_image"])
    parser.add_argument("--burst", action="store_true", help=f"also {2 * QUEUE_SIZE} clients at once at /render_image")
    args = parser.parse_args()
    preset = get_preset("tiny")
    warm_up(preset)
    port = 7900 + os.getpid() % 90
    server = uvicorn.Server(uvicorn.Config(create_app(build_demo(preset), css=CSS), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/"
    plan = [(endpoint, n) for n in args.clients for endpoint in args.endpoints]
    if args.burst:
        plan.append(("/render_image", 2 * QUEUE_SIZE))
    print(f"{'endpoint':<15}{'N':>5}{'ok':>5}{'first p50/p95 s':>18}{'done p50/p95 s':>18}{'jobs/min':>10}"
          f"{'refused (within s)':>20}{'RSS MB':>8}  errors")
    for endpoint, clients in plan:
        r = load(url, endpoint, clients)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{endpoint:<15}{clients:>5}{r['ok']:>5}{r['first'][0]:>9.1f} /{r['first'][1]:>6.1f}"
              f"{r['done'][0]:>10.1f} /{r['done'][1]:>6.1f}{r['per_minute']:>10.0f}"
              f"{r['refused']:>10} ({r['refused_within']:.1f}){rss:>9.0f}  {'; '.join(r['errors']) or '-'}")
    server.should_exit = True


if __name__ == "__main__":
    main()
