"""Hostile clients through the API, which bypasses the sliders: how each bad input is refused.

    python benchmarks/fuzz_api.py [--limit-ms 100]

Starts the app (`python app.py`, its own process, on a free port), reads every public endpoint's
inputs from the app's own config (a slider's range, a dropdown's choices, an image input...), and
for each input in turn sends the endpoint's example values with that one input replaced by a
bad value of its kind: NaN, infinities, out-of-range and huge numbers, fractions where a whole
number is due, wrong types, empty and 100,000-character text, control characters, unknown
choices, and file paths outside the app (traversal, encoded, file:// URLs). Each call is sent as
raw JSON over HTTP (so NaN and Infinity can be sent) and counted as:
  clean   refused within --limit-ms with a message that says what is wrong;
  slow    refused with a clear message, but later than --limit-ms;
  unclear refused without a usable message (empty, "null", Gradio's generic "upstream" error);
  accepted  the run went ahead (a bad value let through).
Then it counts "Traceback" in the server's log, and checks the app still answers a normal call.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_room import start_server  # noqa: E402

HUGE = "x" * 100_000
EXAMPLE_PICTURE = Path(__file__).resolve().parents[1] / "examples" / "images" / "cat_and_boat_on_the_sea.png"
FILE = {"meta": {"_type": "gradio.FileData"}}
BAD_FILES = [FILE | {"path": "/etc/passwd"}, FILE | {"path": "../../../../etc/passwd"},
             FILE | {"path": "%2e%2e/%2e%2e/etc/passwd"}, FILE | {"path": "..\\..\\windows\\win.ini"},
             FILE | {"url": "file:///etc/passwd"}, FILE | {"path": "/proc/self/environ"}, "/etc/passwd", 5, []]
WRONG_TYPES = [[], {}, [1, 2], {"__class__": "x"}]


def bad_values(component: dict, first_text: bool) -> list:
    """Bad values for one input, from its kind and its settings in the app's config."""
    kind, props = component["type"], component["props"]
    if kind in ("slider", "number"):
        low, high = props.get("minimum"), props.get("maximum")
        values = [math.nan, math.inf, -math.inf, 1e300, -1e300, "ten", "1e400"] + WRONG_TYPES
        values += [low - 1] if low is not None else []
        values += [high + 1, high * 1000] if high is not None else []
        if props.get("step") == 1 or props.get("precision") == 0:
            values.append((low or 0) + 0.5)  # not a whole number
        if low is not None and low >= 0:
            values.append(-(2**64))
        return values
    if kind == "textbox":
        values = [HUGE, "a\x00b\x1b[31m", 5] + WRONG_TYPES
        return values + (["", None] if first_text else [])
    if kind in ("dropdown", "radio"):
        if props.get("allow_custom_value"):  # any text is a value (e.g. the explorer's highlighted word)
            return [HUGE, "a\x00b\x1b[31m", 99] + WRONG_TYPES
        return ["no such choice", "../../etc/passwd", 99] + WRONG_TYPES
    if kind == "checkboxgroup":
        return [["no such choice"], "minilm", [5]]
    if kind == "image":
        return BAD_FILES
    if kind == "dataset":
        return [-1, 10**6, "x", math.nan]
    return []


def example_values(component: dict, picture: dict):
    kind, props = component["type"], component["props"]
    if kind in ("slider", "number"):
        return props.get("value") if props.get("value") is not None else props.get("minimum", 0)
    if kind == "checkboxgroup":
        return props.get("value") or [props["choices"][0][1]]
    if kind in ("dropdown", "radio"):
        return props.get("value") if props.get("value") is not None else (props["choices"] or [("", "")])[0][1]
    if kind == "dataset":
        return 0
    if kind == "image":
        return picture
    return props.get("value", "")


def call(url: str, api_name: str, data: list) -> tuple[str, str, float]:
    started = time.perf_counter()
    body = json.dumps({"data": data}, allow_nan=True)  # NaN and Infinity as the JSON extensions clients send
    response = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                          headers={"Content-Type": "application/json"}, timeout=60)
    if response.status_code != 200:
        return "http", f"{response.status_code} {response.text[:300]}", time.perf_counter() - started
    event_id = response.json()["event_id"]
    event = payload = ""
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
                if event in ("error", "complete"):
                    break
    return event, payload, time.perf_counter() - started


def verdict(event: str, message: str, seconds: float, limit_s: float) -> str:
    if event == "complete":
        return "accepted"
    if not message or message == "null" or "upstream Gradio app" in message or "Traceback" in message:
        return "unclear"
    return "clean" if seconds <= limit_s else "slow"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-ms", type=float, default=100)
    parser.add_argument("--show", type=int, default=12, help="print this many of the cases that were not clean")
    args = parser.parse_args()
    server, url = start_server("process")
    try:
        config = httpx.get(f"{url}config").json()
        components = {c["id"]: c for c in config["components"]}
        with open(EXAMPLE_PICTURE, "rb") as f:  # a real upload, so the other inputs are what is tested
            path = httpx.post(f"{url}gradio_api/upload", files={"files": ("example.png", f)}).json()[0]
        picture = FILE | {"path": path}
        cases = []
        for dependency in config["dependencies"]:
            name = dependency.get("api_name")
            if not name or dependency.get("api_visibility", "public") != "public" or not dependency["inputs"]:
                continue
            inputs = [components[i] for i in dependency["inputs"]]
            base = [example_values(c, picture) for c in inputs]
            first_text = next((i for i, c in enumerate(inputs) if c["type"] == "textbox"), None)
            for position, component in enumerate(inputs):
                for value in bad_values(component, position == first_text):
                    cases.append((name, position, base[:position] + [value] + base[position + 1:]))
        outcomes, examples = Counter(), []
        per_endpoint: dict[str, Counter] = {}
        for name, position, data in cases:
            event, message, seconds = call(url, name, data)
            kind = verdict(event, message, seconds, args.limit_ms / 1000)
            outcomes[kind] += 1
            per_endpoint.setdefault(name, Counter())[kind] += 1
            if kind != "clean":
                examples.append((kind, name, position, str(data[position])[:40], round(seconds * 1000), message[:120]))
        floor = sorted(call(url, "tokenize_words", ["dog, cat", ""])[2] for _ in range(20))
        log = Path("/tmp/bench_room_process.log").read_text()
        normal = call(url, "render_image", ["a red cat", 4, 5.0, "", 0, "ddim"])
    finally:
        server.terminate()
        server.wait()
    print(f"{len(cases)} hostile calls; refusal limit {args.limit_ms:.0f} ms")
    print("| endpoint | calls | clean | slow | unclear | accepted |\n|---|---|---|---|---|---|")
    for name, counts in per_endpoint.items():
        print(f"| {name} | {sum(counts.values())} | {counts['clean']} | {counts['slow']} | {counts['unclear']} "
              f"| {counts['accepted']} |")
    print(f"| all | {len(cases)} | {outcomes['clean']} | {outcomes['slow']} | {outcomes['unclear']} "
          f"| {outcomes['accepted']} |")
    print(f"tracebacks in the server's log: {log.count('Traceback')}")
    print(f"a valid quick call (tokenize_words), the transport's floor: p50 {floor[10] * 1000:.0f} ms, "
          f"max {floor[-1] * 1000:.0f} ms")
    print(f"a normal call afterwards: {normal[0]} in {normal[2]:.2f} s")
    for example in [e for e in examples if e[0] != "slow"] + [e for e in examples if e[0] == "slow"][:args.show]:
        print("  ", example)


if __name__ == "__main__":
    main()
