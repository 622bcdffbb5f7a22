"""A room of phones at once: N concurrent clients against the app on loopback, batched and alone.

    python benchmarks/bench_room.py [--clients 10 25 50] [--modes alone threads process] [--burst] [--raw]

For each mode it starts the app as `python app.py` serves it (a server process of its own on a
free port), in one of three modes (MODES): "alone", each request running on its own as before the
step loops (WORDSWORLDS_BATCHING=0); "threads", the step loops batching in the web server's
process (WORDSWORLDS_ENGINE_PROCESS=0); "process", the default, the step loops in an engine
process of their own (engines.py). Then for each N fires N `gradio_client` clients at once at `/compare`,
`/generate_text` and `/render_image` (each client its own prompt and seed), and prints, per
mode, endpoint and N:
  - ok: runs that finished; refused: runs turned away (and within how many seconds);
  - first shown p50/p95: when the run itself first showed (a token or a denoising frame);
  - first output p50/p95: when anything first came back (a place in line counts);
  - done p50/p95, jobs per minute, errors (time-outs included);
  - the server's resident memory: idle before, peak, and after the load.
Each client first opens the page (the page-load event, in a session of its own), as a phone has before
anyone presses Run; the clock starts when the room presses Run together.
The clients are spread over `--client-processes` processes (8): a phone is a computer of its own.
`--burst` adds 2 x serving.CAPACITY clients at once at /render_image (the batched modes refuse the
excess at once with "the room is full"). `--raw` sends the clients over Gradio's plain HTTP API (a
POST, then its event stream) instead: fifty `gradio_client` clients in one process share the two
cores with the server, and their own threads and message handling slow it down. The figures
depend on what else runs: say so beside them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.serving import CAPACITY  # noqa: E402

SCENES = ["a large red cat on the left", "a small blue boat on the right, on the sea", "a big yellow sun at the top, at sunset",
          "two small white clouds in the middle and a large brown house below, on the grass",
          "a large orange rocket at the bottom, in space"]
RECIPE = get_preset().recipe  # what the sliders start at: what a room sends
MODES = {  # the server's settings per mode: each request alone; batched in the web process; in an engine process
    "alone": {"WORDSWORLDS_BATCHING": "0"},
    "threads": {"WORDSWORLDS_BATCHING": "1", "WORDSWORLDS_ENGINE_PROCESS": "0"},
    "process": {"WORDSWORLDS_BATCHING": "1", "WORDSWORLDS_ENGINE_PROCESS": "1"},
}
CLIENT_TIMEOUT_S = 300
JOIN_TIMEOUT_S = 60  # for each HTTP request of a client (joining the queue, reading its events)  # a run not done by then counts as a time-out


def arguments(endpoint: str, index: int) -> tuple:
    prompt, seed = SCENES[index % len(SCENES)], index
    if endpoint == "/generate_text":
        return prompt, 32, 0, 0, 1, seed
    steps, guidance, scheduler = RECIPE.steps, RECIPE.guidance_scale, RECIPE.scheduler
    if endpoint == "/render_image":
        return prompt, steps, guidance, "", seed, scheduler
    if endpoint == "/two_by_two":
        return prompt, steps, guidance, seed, scheduler
    return prompt, 32, 0, 0, 1, steps, guidance, "", seed, scheduler


def shows_the_run(endpoint: str, output) -> bool:
    """Whether an output shows the run itself: a token, or a denoising frame (not just a place in line)."""
    output = output if isinstance(output, (list, tuple)) else [output]
    if endpoint == "/generate_text":
        return bool(output[0]) and isinstance(output[0], list)
    if endpoint == "/render_image":
        return bool(output[0])
    if endpoint == "/two_by_two":  # any lane's words or picture
        return any(bool(output[i]) for i in (0, 2, 4, 6))
    # Tokens, or a picture (x_t comes first). Over the plain HTTP API the outputs include the handler's
    # gr.State (as null), over gradio_client they do not: look for a picture rather than count places.
    return (isinstance(output[0], list) and bool(output[0])) or any(is_picture(o) for o in output[1:])


def is_picture(output) -> bool:
    """A picture as the API sends it: a file's payload, or (gradio_client) its path."""
    if isinstance(output, dict):
        return bool(output.get("url") or output.get("path"))
    return isinstance(output, str) and output.lower().endswith((".png", ".webp", ".jpg", ".jpeg"))


def one_client(url: str, endpoint: str, index: int, rows: list, together: threading.Barrier,
               connecting: threading.Semaphore) -> None:
    """Connect (as a phone loads the page, a few at a time), wait for every client to be connected, then
    submit at once, as a room pressing Run together: times run from the submit."""
    try:
        with connecting:
            # Pictures stay on the server (download_files=False): fetching every preview of fifty runs would
            # make this one process, standing in for fifty phones, the busiest on the machine.
            # A browser waits for the server's answer to its join; gradio_client gives up after httpx's 5 s.
            client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": JOIN_TIMEOUT_S})
            with httpx.Client(timeout=JOIN_TIMEOUT_S) as http:
                open_page(http, url, client.session_hash)
    except Exception as error:  # noqa: BLE001  (counted and reported)
        client = error
    together.wait()
    if isinstance(client, Exception):
        rows.append(("error", None, None, 0.0, f"connect: {type(client).__name__}: {client}"[:100], index, None))
        return
    started = time.perf_counter()
    first = shown = None
    try:
        job = client.submit(*arguments(endpoint, index), api_name=endpoint)
        seen = 0
        while not job.done():
            outputs = job.outputs()
            now = time.perf_counter() - started
            if outputs and first is None:
                first = now
            if shown is None and any(shows_the_run(endpoint, o) for o in outputs[seen:]):
                shown = now
            seen = len(outputs)
            if now > CLIENT_TIMEOUT_S:
                job.cancel()
                raise TimeoutError(f"not done after {CLIENT_TIMEOUT_S} s")
            time.sleep(0.05)
        result = job.result()
        done = time.perf_counter() - started
        rows.append(("ok", first or done, shown or done, done, "", index, fingerprint(endpoint, result)))
    except Exception as error:  # noqa: BLE001  (counted and reported)
        text = f"{type(error).__name__}: {error}"
        kind = "refused" if "room is full" in text.lower() or "queue is full" in text.lower() else "error"
        rows.append((kind, None, None, time.perf_counter() - started, text[:100], index, None))


def raw_client(url: str, endpoint: str, index: int, rows: list, together: threading.Barrier,
               connecting: threading.Semaphore) -> None:
    """As one_client, but over Gradio's plain HTTP API (a POST, then its event stream), a thread blocked on
    a socket: about as little client work as a phone's, so the figures are the server's. Each client's HTTP
    client (and its connection) is made when it opens the page: fifty made at the moment of Run had added
    about a second, in this process, before the requests left."""
    http = httpx.Client(timeout=JOIN_TIMEOUT_S)
    session, failed = f"room{index}", None
    try:
        with connecting:
            open_page(http, url, session)
    except Exception as error:  # noqa: BLE001  (counted and reported)
        failed = error
    together.wait()
    if failed is not None:
        http.close()
        rows.append(("error", None, None, 0.0, f"page: {type(failed).__name__}: {failed}"[:100], index, None))
        return
    started = time.perf_counter()
    first = shown = None
    try:
        body = json.dumps({"data": list(arguments(endpoint, index)), "session_hash": session})
        api = f"{url}gradio_api/call{endpoint}"
        response = http.post(api, content=body, headers={"Content-Type": "application/json"})
        response.raise_for_status()
        event = data = None
        with http.stream("GET", f"{api}/{response.json()['event_id']}", timeout=CLIENT_TIMEOUT_S) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("generating", "complete", "error"):
                    now = time.perf_counter() - started
                    first = first or now
                    if shown is None or event != "generating":  # read a message only while it matters
                        data = json.loads(line.split(":", 1)[1])
                        if event != "error" and shown is None and shows_the_run(endpoint, data):
                            shown = now
                    if event in ("complete", "error"):
                        break
        done = time.perf_counter() - started
        if event != "complete":
            raise RuntimeError(str(data)[:200])
        rows.append(("ok", first or done, shown or done, done, "", index, fingerprint(endpoint, data)))
    except Exception as error:  # noqa: BLE001  (counted and reported)
        text = f"{type(error).__name__}: {error}"
        kind = "refused" if "room is full" in text.lower() or "queue is full" in text.lower() else "error"
        rows.append((kind, None, None, time.perf_counter() - started, text[:100], index, None))
    finally:
        http.close()


@functools.lru_cache
def page_load_event(url: str) -> int:
    """The id of the app's page-load event, read once from its config (not once per client)."""
    config = httpx.get(f"{url}config", timeout=JOIN_TIMEOUT_S).json()
    return next(d["id"] for d in config["dependencies"] if any(t[1] == "load" for t in d["targets"]))


def open_page(http: httpx.Client, url: str, session: str) -> None:
    """What a browser does when the page opens: its page-load event, through the queue, in a session of its
    own. Gradio sets up a session's state (a copy of every component's settings) at its first event; a
    client whose first event is Run would pay that when the room presses Run, a phone does not."""
    load = page_load_event(url)
    http.post(f"{url}gradio_api/queue/join", json={"data": [], "fn_index": load, "session_hash": session,
                                                   "event_data": None, "trigger_id": None}).raise_for_status()
    with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return


def picture_hash(payload) -> str:
    return hashlib.sha256(np.asarray(Image.open(io.BytesIO(httpx.get(payload["url"]).content))
                                     .convert("RGB")).tobytes()).hexdigest()


def fingerprint(endpoint: str, result) -> tuple:
    """What a run produced, to compare the batched modes with alone: the text, and the final picture's pixels."""
    if endpoint == "/two_by_two":  # both captions, both pictures
        texts = " | ".join(" ".join(chunk["token"] for chunk in result[i] or []) for i in (0, 2))
        return texts, " | ".join(picture_hash(result[i]) for i in (4, 6))
    text = picture = ""
    if endpoint in ("/generate_text", "/compare"):
        text = "".join(chunk["token"] for chunk in result[0])
    if endpoint in ("/render_image", "/compare"):
        path = result[2] if endpoint == "/render_image" else result[-3]  # the final picture (then two meters)
        picture = hashlib.sha256(np.asarray(Image.open(io.BytesIO(httpx.get(path["url"]).content))
                                            .convert("RGB")).tobytes()).hexdigest()
    return text, picture


def percentile(values: list[float], share: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(share * (len(values) - 1))))] if values else float("nan")


def rss_mb(pid: int) -> float:
    """The resident memory of the server and its children (the engine process), in MB."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        total += rss_mb(int(child))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return total + int(line.split()[1]) / 1024
    return float("nan")


def client_group(url: str, endpoint: str, client_name: str, indices: list[int], everyone, out) -> None:
    """One process of clients: each opens its page; once all have, wait for every other process's (the
    `everyone` barrier), then press Run together; send the rows back through `out`."""
    rows: list = []
    together = threading.Barrier(len(indices) + 1)
    connecting = threading.Semaphore(4)
    threads = [threading.Thread(target=globals()[client_name], args=(url, endpoint, i, rows, together, connecting))
               for i in indices]
    for thread in threads:
        thread.start()
    while together.n_waiting < len(indices) and any(thread.is_alive() for thread in threads):
        time.sleep(0.02)
    everyone.wait()
    together.wait()
    for thread in threads:
        thread.join()
    out.put(rows)


def load(url: str, endpoint: str, clients: int, pid: int, client=one_client, processes: int = 1) -> dict:
    """N clients at once, spread over `processes` client processes (a phone is a computer of its own: fifty
    clients' Python in one process queue for its interpreter lock, and measured the server slower than
    it is; a burst's last refusal came 1.01 s after the clicks from one process, 0.78 s from six)."""
    processes = max(1, min(processes, clients))
    everyone = multiprocessing.Barrier(processes + 1)
    out = multiprocessing.Queue()
    groups = [multiprocessing.Process(target=client_group, daemon=True,
                                      args=(url, endpoint, client.__name__, list(range(p, clients, processes)),
                                            everyone, out))
              for p in range(processes)]
    idle = rss_mb(pid)
    peak = [idle]
    watching = threading.Event()

    def watch():
        while not watching.wait(0.25):
            peak[0] = max(peak[0], rss_mb(pid))

    for group in groups:
        group.start()
    everyone.wait()
    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    rows = [row for _ in groups for row in out.get()]
    for group in groups:
        group.join()
    wall = time.perf_counter() - started
    watching.set()
    watcher.join()
    time.sleep(2)  # let the server settle before reading its memory afterwards
    ok = [r for r in rows if r[0] == "ok"]
    refused = [r for r in rows if r[0] == "refused"]
    pick = lambda i: [r[i] for r in ok]  # noqa: E731
    return {
        "endpoint": endpoint, "clients": clients, "ok": len(ok), "refused": len(refused),
        "refused_within": max((r[3] for r in refused), default=0.0),
        "first": (percentile(pick(1), 0.5), percentile(pick(1), 0.95)),
        "shown": (percentile(pick(2), 0.5), percentile(pick(2), 0.95)),
        "done": (percentile(pick(3), 0.5), percentile(pick(3), 0.95)),
        "per_minute": len(ok) / wall * 60,
        "rss": (idle, peak[0], rss_mb(pid)),
        "errors": sorted({r[4] for r in rows if r[0] == "error"}),
        "results": {r[5]: r[6] for r in ok},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(mode: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                        **MODES[mode]}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(f"/tmp/bench_room_{mode}.log", "w"))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            Client(url, verbose=False)
            return server, url
        except Exception:  # noqa: BLE001  (not up yet)
            if server.poll() is not None:
                raise SystemExit(f"the {mode} server exited; see /tmp/bench_room_{mode}.log")
            time.sleep(0.5)
    raise SystemExit("the server did not start in 5 minutes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 25, 50])
    parser.add_argument("--endpoints", nargs="+", default=["/compare", "/generate_text", "/render_image"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--raw", action="store_true", help="clients over the plain HTTP API, not gradio_client")
    parser.add_argument("--burst", action="store_true", help=f"also {2 * CAPACITY} clients at once at /render_image")
    parser.add_argument("--client-processes", type=int, default=8, help="processes the clients are spread over")
    args = parser.parse_args()
    print(f"clients: {'plain HTTP' if args.raw else 'gradio_client'}, spread over {args.client_processes} processes\n")
    print(f"| mode | endpoint | N | ok | refused (within s) | first shown p50 / p95 s | first output p50 / p95 s "
          f"| done p50 / p95 s | jobs/min | RSS MB idle / peak / after | errors |")
    print("|---" * 11 + "|")
    results: dict[tuple, dict] = {}
    for mode in args.modes:
        server, url = start_server(mode)
        try:
            plan = [(endpoint, n) for n in args.clients for endpoint in args.endpoints]
            if args.burst:
                plan.append(("/render_image", 2 * CAPACITY))
            for endpoint, clients in plan:
                r = load(url, endpoint, clients, server.pid, raw_client if args.raw else one_client,
                         args.client_processes)
                print(f"| {mode} | {endpoint} | {clients} | {r['ok']} | {r['refused']} ({r['refused_within']:.2f}) "
                      f"| {r['shown'][0]:.1f} / {r['shown'][1]:.1f} | {r['first'][0]:.1f} / {r['first'][1]:.1f} "
                      f"| {r['done'][0]:.1f} / {r['done'][1]:.1f} | {r['per_minute']:.0f} "
                      f"| {r['rss'][0]:.0f} / {r['rss'][1]:.0f} / {r['rss'][2]:.0f} | {'; '.join(r['errors']) or '-'} |",
                      flush=True)
                results[mode, endpoint, clients] = r["results"]
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:  # uvicorn waits for the connections of timed-out clients to close
                server.kill()
                server.wait()
    if "alone" in args.modes and len(args.modes) > 1:  # quality beside speed: does batching change a run's result?
        print("\n| mode | endpoint | N | runs finished in both modes | same text and same picture as alone |")
        print("|---|---|---|---|---|")
        for (mode, endpoint, clients), served in results.items():
            if mode == "alone" or ("alone", endpoint, clients) not in results:
                continue
            alone = results["alone", endpoint, clients]
            both = set(served) & set(alone)
            same = sum(served[i] == alone[i] for i in both)
            print(f"| {mode} | {endpoint} | {clients} | {len(both)} | {same} |")


if __name__ == "__main__":
    main()
