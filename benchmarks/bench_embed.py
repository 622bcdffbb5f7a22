"""Embedding explorer timings: 100 words in every space, cold and warm (cached), then projections.

    python benchmarks/bench_embed.py                 # the preset's models; appearance spaces need trained weights
    WORDSWORLDS_DIFFUSION=/path/to/diffusers/folder python benchmarks/bench_embed.py --words 100

Columns: `first` is the first call in the process (loads the model), `cold` the same words
again after clearing the embedding cache (model loaded), `warm` served from the cache.
The target is the last line: the whole explorer request (every space, PCA, similarities,
agreement, figures) answered warm in at most 3 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from wordsworlds.errors import ModelUnavailable  # noqa: E402
from wordsworlds.explore.explorer import explore, word_sets  # noqa: E402
from wordsworlds.explore.figures import heatmap_figure, scatter_figure  # noqa: E402
from wordsworlds.explore.projection import project  # noqa: E402
from wordsworlds.explore.spaces import CACHE, SPACES, Sources, embed  # noqa: E402
from wordsworlds.presets import get_preset  # noqa: E402

TARGET_WARM_S = 3.0


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--diffusion", help="diffusers folder (default: the tiny preset's)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice); on a CPU "
                        "shared with another busy process, 1 avoids threads spin-waiting on each other")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pool = [w for chosen in word_sets().values() for w in chosen["words"]]
    words = list(dict.fromkeys(pool))[: args.words]
    preset = get_preset("tiny", **({"diffusion": args.diffusion} if args.diffusion else {}))
    sources = Sources(preset)
    print(f"{len(words)} words; diffusion: {preset.diffusion}; torch threads: {torch.get_num_threads()}")
    print(f"{'space':<14}{'dims':>7}{'first s':>9}{'cold s':>9}{'warm s':>9}{'pca s':>8}{'tsne s':>8}{'umap s':>8}")
    available = []
    for name in SPACES:
        try:
            vectors, first = timed(embed, words, name, "", sources=sources)
        except ModelUnavailable as error:
            print(f"{name:<14} skipped: {error}")
            continue
        available.append(name)
        CACHE.clear()
        _, cold = timed(embed, words, name, "", sources=sources)
        _, warm = timed(embed, words, name, "", sources=sources)
        seconds = [timed(project, vectors, method, 2)[1] for method in ("pca", "tsne", "umap")]
        print(f"{name:<14}{vectors.shape[1]:>7}{first:>9.2f}{cold:>9.2f}{warm:>9.4f}"
              + "".join(f"{s:>8.2f}" for s in seconds))
    if not available:
        return 1
    for name in available:  # fill the cache again (clear() above emptied the earlier spaces)
        embed(words, name, "", sources=sources)
    _, explore_s = timed(explore, preset, words, spaces=available)
    result, explore_s = timed(explore, preset, words, spaces=available)
    _, figures_s = timed(lambda: (scatter_figure(result), heatmap_figure(result)))
    _, tables_s = timed(lambda: (result.agreements(), result.rank_shifts(3), result.neighbours(words[0])))
    total = explore_s + figures_s + tables_s
    print(f"warm request, {len(available)} spaces, PCA: explore {explore_s:.2f} s + figures {figures_s:.2f} s "
          f"+ tables {tables_s:.2f} s = {total:.2f} s (target <= {TARGET_WARM_S:.0f} s: "
          f"{'met' if total <= TARGET_WARM_S else 'MISSED'})")
    return 0 if total <= TARGET_WARM_S else 1


if __name__ == "__main__":
    sys.exit(main())
