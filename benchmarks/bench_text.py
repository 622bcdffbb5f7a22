"""Words engine benchmark: speed and quality of each LLM precision option, against fp32 in the same run.

    python benchmarks/bench_text.py [--tokens 48] [--repeats 3] [--threads N]

Speed: decode tokens/s and time to first token, for plain `model.generate` in fp32 (the
baseline a user would write first), for the engine's own token loop at each precision, and,
for comparison, for llama.cpp on the same GGUF file the engine's weights are converted from
(`pip install -r requirements-bench.txt`; without it the row says so). All on the same threads.
Quality, beside every speed figure (a speed-up counts only at unchanged quality):
- perplexity on held-out text the model never saw in this project (a few paragraphs below);
- greedy agreement with fp32: the share of answer tokens that match fp32's, position by
  position, over fixed chat prompts, and how many answers are identical.
Plus the app's start-up time.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from wordsworlds.accel import optimize_llm  # noqa: E402
from wordsworlds.models import load_llm, package_file  # noqa: E402
from wordsworlds.presets import get_preset  # noqa: E402
from wordsworlds.words.next_token import TextGenerator  # noqa: E402

try:
    import xllamacpp  # llama.cpp, from requirements-bench.txt
except ImportError:
    xllamacpp = None

PROMPT_30 = ("Explain in simple words how a painter starts from a blank white canvas, sketches the main shapes, "
             "and then slowly adds colour and fine detail until the picture")
CHAT_PROMPTS = [
    "Name three colours.", "What is 2 plus 2?", "Which planet do we live on?", "Write one sentence about a cat.",
    "a large red cat on the left and a small blue boat on the right, on the sea", "What is the capital of France?",
    "Give me a word that rhymes with moon.", "How many legs does a spider have?",
]
HELD_OUT = [  # written for this benchmark: plain prose the model cannot have memorised
    "The bakery on the corner opens before sunrise. By six the windows are fogged with steam, and the first "
    "customers wait outside with their collars turned up against the wind, talking quietly about the weather.",
    "A river does not run in a straight line. It bends around hard rock and cuts through soft ground, and over "
    "many years the bends grow wider until the water finds a shorter path and leaves a quiet lake behind.",
    "When the train stopped between two stations, nobody spoke at first. Then a child asked why the fields were "
    "so green, and an old man began to explain how the spring rain had come early that year.",
    "Learning to play an instrument takes patience. The first weeks are full of wrong notes, but slowly the "
    "fingers remember where to go, and one evening a simple tune comes out exactly as it should.",
]


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


@torch.inference_mode()
def perplexity(model, tokenizer) -> float:
    nll, count = 0.0, 0
    for text in HELD_OUT:
        ids = tokenizer(text, return_tensors="pt").input_ids
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def answers(generator: TextGenerator, tokens: int) -> list[list[int]]:
    return [[s.token_id for s in generator.generate(p, max_new_tokens=tokens).steps] for p in CHAT_PROMPTS]


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, int]:
    """(share of reference positions where the token matches, number of identical answers)."""
    matched = total = 0
    for a, b in zip(reference, other):
        total += len(a)
        matched += sum(x == y for x, y in zip(a, b))
    return matched / total, sum(a == b for a, b in zip(reference, other))


class LlamaCpp:
    """llama.cpp in this process through xllamacpp's embedded server: its OpenAI-style completions
    endpoint called directly, no HTTP round trip (it does listen too, on a free local port)."""

    def __init__(self, gguf: Path, threads: int):
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx, params.n_parallel, params.port, params.verbosity = 2048, 1, 0, -1
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads  # decode and prefill
        self.server = xllamacpp.Server(params)

    def complete(self, prompt: str | list[int], **request) -> dict:
        """Greedy (temperature 0: argmax). A prompt given as token ids is used as is, with no BOS added."""
        return self.server.handle_completions({"prompt": prompt, "temperature": 0.0, **request})

    def bench(self, tokens: int) -> tuple[float, float]:
        """Timed as the engine times itself: from the call to the first streamed token, then
        (new tokens - 1) / the rest. Without the prompt cache, so each run prefills afresh like the engine."""
        times, usage = [], {}
        start = time.perf_counter()

        def on_chunk(chunk: dict) -> None:
            times.append(time.perf_counter() - start)
            usage.update(chunk.get("usage") or {})

        self.server.handle_completions({"prompt": PROMPT_30, "max_tokens": tokens, "temperature": 0.0,
                                        "stream": True, "cache_prompt": False}, on_chunk)
        return (usage["completion_tokens"] - 1) / (times[-1] - times[0]), times[0]

    def perplexity(self, tokenizer) -> float:
        """Its API returns no log-probs for prompt tokens (completions refuse `echo`), so each held-out
        token is forced as the one next token after its prefix (logit_bias +100; the prefix comes from
        the prompt cache) and its log-prob read back. `n_probs` reports the softmax of the raw logits
        (temperature 1, before the sampling chain: bias, temperature, top-k/p; `post_sampling_probs`
        would report after it), so forcing the token leaves its log-prob unchanged."""
        nll, count = 0.0, 0
        for text in HELD_OUT:
            ids = tokenizer(text).input_ids  # the same token ids as `perplexity`
            for i in range(1, len(ids)):
                step = self.complete(ids[:i], max_tokens=1, n_probs=1, logit_bias=[[ids[i], 100]])
                step = step["choices"][0]["logprobs"]["content"][0]
                assert step["id"] == ids[i], step
                nll -= step["logprob"]
            count += len(ids) - 1
        return math.exp(nll / count)

    def answers(self, generator: TextGenerator, tokens: int) -> list[list[int]]:
        """Greedy answers to the prompt token ids the engine builds (the same chat template, applied by
        the same tokenizer), compared as token ids."""
        out = []
        for prompt in CHAT_PROMPTS:
            ids = generator.encode_prompt(prompt, chat=True)[0].tolist()
            content = self.complete(ids, max_tokens=tokens, n_probs=1)["choices"][0]["logprobs"]["content"]
            out.append([step["id"] for step in content])
        return out


def app_start_seconds() -> float:
    """Time for a fresh process to import the app and load the tiny preset's models (caches warm)."""
    code = ("import time; t=time.perf_counter(); import app; from wordsworlds.ui import warm_up; "
            "warm_up(app.preset); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for torch and llama.cpp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    llm = load_llm(get_preset("tiny"))
    model, tokenizer = llm.model, llm.tokenizer
    prompt_tokens = len(tokenizer(PROMPT_30).input_ids)
    best = lambda runs: (max(r[0] for r in runs), min(r[1] for r in runs))  # noqa: E731
    baseline = best([bench_generate(model, tokenizer, args.tokens) for _ in range(args.repeats)])
    fp32 = TextGenerator(model, tokenizer)
    reference = answers(fp32, args.answer_tokens)
    rows = [("model.generate, fp32 (baseline)", *baseline, perplexity(model, tokenizer), 1.0, len(reference))]
    for precision in ("fp32", "bf16", "int8"):
        optimized, ran = optimize_llm(model, precision)
        generator = TextGenerator(optimized, tokenizer)
        bench_engine(generator, 4)  # warm-up
        speed = best([bench_engine(generator, args.tokens) for _ in range(args.repeats)])
        rows.append((f"engine, {ran}", *speed, perplexity(optimized, tokenizer),
                     *agreement(reference, answers(generator, args.answer_tokens))))
    llama_row = "llama.cpp (xllamacpp), same GGUF"
    if xllamacpp is not None:
        llama = LlamaCpp(package_file(get_preset("tiny").llm), args.threads)
        llama.bench(4)  # warm-up
        speed = best([llama.bench(args.tokens) for _ in range(args.repeats)])
        rows.append((f"{llama_row}, {xllamacpp.__version__}", *speed, llama.perplexity(tokenizer),
                     *agreement(reference, llama.answers(fp32, args.answer_tokens))))
    print(f"\n{args.tokens} new tokens, {prompt_tokens}-token prompt, best of {args.repeats}; quality: perplexity on "
          f"{len(HELD_OUT)} held-out paragraphs, greedy agreement with fp32 over {len(CHAT_PROMPTS)} chat prompts "
          f"({args.answer_tokens} tokens each)")
    print(f"{'configuration':<66}{'decode tok/s':>13}{'x base':>8}{'first tok s':>12}{'perplexity':>11}"
          f"{'tokens = fp32':>14}{'answers = fp32':>15}")
    for name, tps, ttft, ppl, share, same in rows:
        print(f"{name:<66}{tps:>13.1f}{tps / baseline[0]:>8.2f}{ttft:>12.3f}{ppl:>11.2f}{share:>14.1%}"
              f"{f'{same}/{len(CHAT_PROMPTS)}':>15}")
    if xllamacpp is None:
        print(f"{llama_row:<66}not installed (pip install -r requirements-bench.txt)")
    starts = [app_start_seconds() for _ in range(2)]
    print(f"\napp start to ready (imports + tiny models), first and second run: "
          f"{starts[0]:.1f} s, {starts[1]:.1f} s")


if __name__ == "__main__":
    main()
