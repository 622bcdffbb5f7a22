"""Words engine benchmark: decode tokens/s, time to first token, start-up time.

    python benchmarks/bench_text.py [--tokens 48] [--repeats 3]

Baseline in the same run: plain `model.generate` in fp32 on the same model (what a user
would write first). Then the engine's own token loop at each precision option.
Targets (2-core CPU): decode >= 2x the baseline, first token < 0.3 s for a 30-token prompt,
second start of the app to ready < 15 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from wordsworlds.accel import optimize_llm  # noqa: E402
from wordsworlds.models import load_causal_lm  # noqa: E402
from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.text import TextGenerator  # noqa: E402

PROMPT_30 = ("Explain in simple words how a painter starts from a blank white canvas, sketches the main shapes, "
             "and then slowly adds colour and fine detail until the picture")


def bench_generate(model, tokenizer, tokens: int) -> tuple[float, float]:
    ids = tokenizer(PROMPT_30, return_tensors="pt").input_ids
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        total = time.perf_counter() - start
    new = out.shape[1] - ids.shape[1]
    return (new - 1) / (total - ttft), ttft


def bench_engine(generator: TextGenerator, tokens: int) -> tuple[float, float]:
    result = generator.generate(PROMPT_30, max_new_tokens=tokens, chat=False)
    return result.stats.tokens_per_s, result.stats.time_to_first_token_s


def app_start_seconds() -> float:
    """Time for a fresh process to import the app and load every tiny model (caches warm)."""
    code = ("import time; t=time.perf_counter(); import app; "
            "from wordsworlds.text import TextGenerator; from wordsworlds.image import ImageGenerator; "
            "TextGenerator.load(); ImageGenerator.load(); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model, tokenizer = load_causal_lm(get_preset("tiny").llm)
    prompt_tokens = len(tokenizer(PROMPT_30).input_ids)
    rows = []
    best = lambda runs: (max(r[0] for r in runs), min(r[1] for r in runs))  # noqa: E731
    baseline = best([bench_generate(model, tokenizer, args.tokens) for _ in range(args.repeats)])
    rows.append(("model.generate, fp32 (baseline)", *baseline))
    for precision in ("fp32", "bf16", "int8"):
        optimized, ran = optimize_llm(model, precision)
        generator = TextGenerator(optimized, tokenizer)
        bench_engine(generator, 4)  # warm-up
        rows.append((f"engine, {ran}", *best([bench_engine(generator, args.tokens) for _ in range(args.repeats)])))
    print(f"\n{args.tokens} new tokens, {prompt_tokens}-token prompt, best of {args.repeats}")
    print(f"{'configuration':<72}{'decode tok/s':>13}{'x base':>8}{'first token s':>15}")
    for name, tps, ttft in rows:
        print(f"{name:<72}{tps:>13.1f}{tps / baseline[0]:>8.2f}{ttft:>15.3f}")
    starts = [app_start_seconds() for _ in range(2)]
    print(f"\napp start to ready (imports + tiny models), first and second run: "
          f"{starts[0]:.1f} s, {starts[1]:.1f} s")


if __name__ == "__main__":
    main()
