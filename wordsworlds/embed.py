"""The embedding explorer: the same words in meaning space and appearance space, side by side.

`explore` validates the input, embeds the words in each chosen space (embed_spaces.py),
projects them (projection.py) and measures where the spaces agree and where they do not.
`scatter_figure` and `heatmap_figure` draw the result with plotly; `add_cli` registers
`python -m wordsworlds embed`.

    >>> from wordsworlds.embed import explore
    >>> result = explore("dog, puppy, banana, car", spaces=["minilm"])
    >>> result.neighbours("puppy", k=1)[0]["neighbour"]
    'dog'

    python -m wordsworlds embed dog puppy banana car --space minilm --space clip_text --json
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import projection as proj
from .embed_spaces import SPACES, SpaceUnavailable, Sources, count_cached, embed
from .text import InputError

MAX_WORDS = 500
MAX_WORD_CHARS = 200
MAX_INPUT_CHARS = MAX_WORDS * (MAX_WORD_CHARS + 2)
DEFAULT_SPACES = ("minilm", "llm_hidden", "clip_text", "image_latents")
WORD_SETS_FILE = Path(__file__).resolve().parents[1] / "examples" / "word_sets.json"


def word_sets(path: Path = WORD_SETS_FILE) -> dict[str, dict]:
    """The curated sets: {name: {"about": ..., "words": [...], "template": ...}}."""
    return json.loads(Path(path).read_text())


def parse_words(words) -> tuple[list[str], list[str]]:
    """(unique words in input order, notices). Text is split on commas and new lines."""
    if isinstance(words, str):
        if len(words) > MAX_INPUT_CHARS:
            raise InputError(f"the input is {len(words):,} characters; the limit is {MAX_INPUT_CHARS:,}")
        words = re.split(r"[,\n]", words)
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise InputError("words must be text (comma or newline separated) or a list of strings")
    items = [" ".join(w.split()) for w in words]
    items = [w for w in items if w]
    if not items:
        raise InputError("no words given; type a few words or phrases, separated by commas or new lines")
    if len(items) > MAX_WORDS:
        raise InputError(f"{len(items):,} words; the limit is {MAX_WORDS}")
    for number, item in enumerate(items, 1):
        if len(item) > MAX_WORD_CHARS:
            raise InputError(f"item {number} ({item[:24]!r}…) is {len(item):,} characters; the limit is {MAX_WORD_CHARS}")
    unique = list(dict.fromkeys(items))
    notices = []
    if len(unique) < len(items):
        repeated = sorted({w for w in items if items.count(w) > 1})
        notices.append(f"merged {len(items) - len(unique)} duplicate(s): {', '.join(repeated)}")
    if len(unique) < 2:
        raise InputError("only one distinct word; type at least two to compare")
    return unique, notices


def validate_template(template) -> str:
    template = template or ""
    if not isinstance(template, str) or len(template.strip()) > MAX_WORD_CHARS:
        raise InputError(f"the template must be text of at most {MAX_WORD_CHARS} characters")
    if template and template.count("{}") != 1:
        raise InputError("the template must contain {} exactly once, where each word goes (e.g. 'a photo of a {}')")
    return template.strip()


def validate_spaces(spaces) -> list[str]:
    spaces = [spaces] if isinstance(spaces, str) else list(spaces or [])
    if not spaces:
        raise InputError("choose at least one space")
    unknown = [s for s in spaces if s not in SPACES]
    if unknown:
        raise InputError(f"unknown space(s) {', '.join(map(str, unknown))}; choose from {', '.join(SPACES)}")
    return list(dict.fromkeys(spaces))


@dataclass
class Exploration:
    words: list[str]
    projection: str
    dimensions: int
    highlight: str
    template: str = ""
    sources: Sources | None = None
    spaces: list[str] = field(default_factory=list)  # the spaces that produced vectors, in order
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, tuple] = field(default_factory=dict)
    similarity: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def neighbours(self, word: str, k: int = 5) -> list[dict]:
        if word not in self.words or isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"neighbours need one of the words and k >= 1, got {word!r} and {k!r}")
        index = self.words.index(word)
        return [
            {"space": space, "rank": rank, "neighbour": other, "cosine": round(cos, 4), "distance": round(1 - cos, 4)}
            for space in self.spaces
            for rank, (other, cos) in enumerate(proj.neighbours(self.similarity[space], self.words, index, k), 1)
        ]

    def agreements(self) -> list[dict]:
        return [
            {"space_a": a, "space_b": b} | proj.agreement(self.similarity[a], self.similarity[b])
            for i, a in enumerate(self.spaces) for b in self.spaces[i + 1 :]
        ]

    def rank_shifts(self, k: int = 5) -> list[dict]:
        return [
            {"space_a": a, "space_b": b} | row
            for i, a in enumerate(self.spaces) for b in self.spaces[i + 1 :]
            for row in proj.rank_shifts(self.similarity[a], self.similarity[b], self.words, k)
        ]

    def to_dict(self, k: int = 5) -> dict:
        return {
            "words": self.words, "projection": self.projection, "dimensions": self.dimensions, "notices": self.notices,
            "spaces": {
                s: {"kind": SPACES[s].kind, "axes": list(self.axes[s]), "seconds": round(self.seconds[s], 4),
                    "cached": self.cached[s], "coordinates": np.round(self.coords[s], 5).tolist(),
                    "similarity": np.round(self.similarity[s], 5).tolist()}
                for s in self.spaces
            },
            "neighbours": {w: self.neighbours(w, k) for w in self.words},
            "agreement": self.agreements(), "rank_shifts": self.rank_shifts(k),
        }


def explore(words, template: str = "", spaces=DEFAULT_SPACES, projection: str = "pca", dimensions: int = 2,
            anchor_from: str = "", anchor_to: str = "", highlight: str = "", llm_layer: int | None = None,
            diffusion_source: str | None = None, preset: str | None = None) -> Exploration:
    """Embed, project and compare. Every input is checked before any model work."""
    words, notices = parse_words(words)
    template = validate_template(template)
    spaces = validate_spaces(spaces)
    if projection not in proj.PROJECTIONS:
        raise InputError(f"unknown projection {projection!r}; choose from {', '.join(proj.PROJECTIONS)}")
    if str(dimensions) not in ("2", "3"):  # 2 or "2" (a form), never True or 2.5
        raise InputError(f"dimensions must be 2 or 3, got {dimensions!r}")
    dimensions = int(dimensions)
    anchors = []
    if projection == "anchors":
        anchors = [" ".join(str(a or "").split()) for a in (anchor_from, anchor_to)]
        if not all(anchors) or max(map(len, anchors)) > MAX_WORD_CHARS:
            raise InputError(f"custom axes need two anchor words of 1 to {MAX_WORD_CHARS} characters (e.g. small → large)")
        if anchors[0] == anchors[1]:
            raise InputError("the two anchor words must differ")
    if llm_layer in ("", None):
        llm_layer = None
    elif isinstance(llm_layer, bool) or not isinstance(llm_layer, (int, float)) or int(llm_layer) != llm_layer:
        raise InputError(f"the LLM layer must be a whole number, got {llm_layer!r}")
    highlight = " ".join(str(highlight or "").split())
    if highlight and highlight not in words:
        notices.append(f"'{highlight}' is not among the words; highlighting '{words[0]}'")
    highlight = highlight if highlight in words else words[0]

    try:
        sources = Sources.resolve(preset, diffusion_source, None if llm_layer is None else int(llm_layer))
    except ValueError as error:  # an unknown preset
        raise InputError(str(error)) from None
    result = Exploration(words, projection, dimensions, highlight, template, sources, notices=notices)
    failures = []
    for space in spaces:
        started = time.perf_counter()
        cached = count_cached(words + anchors, space, template, sources)
        try:
            vectors = embed(words + anchors, space, template, sources)
        except SpaceUnavailable as error:
            failures.append(f"{SPACES[space].title}: {error}")
            continue
        anchor_vectors = list(zip(anchors, vectors[len(words):])) or None
        coords, notice, axes = proj.project(vectors[: len(words)], projection, dimensions, anchor_vectors)
        if notice and notice not in result.notices:
            result.notices.append(notice)
        result.spaces.append(space)
        result.coords[space], result.axes[space] = coords, axes
        result.similarity[space] = proj.cosine_matrix(vectors[: len(words)])
        result.seconds[space], result.cached[space] = time.perf_counter() - started, cached
    result.notices += [f"skipped {f}" for f in failures]
    if not result.spaces:
        raise SpaceUnavailable("; ".join(failures))
    return result


# ---------------------------------------------------------------- views


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 3)
    return -(-count // cols), cols


def scatter_figure(result: Exploration):
    """One panel per space; colour follows the first space's x axis, so agreement shows as order."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = _grid(len(result.spaces))
    three = result.dimensions == 3
    fig = make_subplots(rows, cols, specs=[[{"type": "scene" if three else "xy"}] * cols] * rows,
                        subplot_titles=[f"{SPACES[s].kind}: {SPACES[s].title}" for s in result.spaces])
    first = result.coords[result.spaces[0]][:, 0]
    colour = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    labels = "markers+text" if len(result.words) <= 40 else "markers"
    mark = result.words.index(result.highlight)
    for n, space in enumerate(result.spaces):
        row, col = n // cols + 1, n % cols + 1
        xyz = result.coords[space]
        axes = result.axes[space]
        hover = "<b>%{text}</b><br>" + "<br>".join(f"{a}: %{{{k}:.3f}}" for a, k in zip(axes, "xyz")) + "<extra></extra>"
        trace, symbol = (go.Scatter3d, "diamond") if three else (go.Scatter, "star")
        coords = {k: xyz[:, i] for i, k in enumerate("xyz"[: result.dimensions])}
        fig.add_trace(trace(**coords, text=result.words, mode=labels, textposition="top center", hovertemplate=hover,
                            marker=dict(size=5 if three else 9, color=colour, colorscale="Viridis", showscale=False),
                            showlegend=False), row=row, col=col)
        fig.add_trace(trace(**{k: v[mark : mark + 1] for k, v in coords.items()}, text=[result.highlight],
                            mode="markers+text", textposition="top center", hovertemplate=hover, showlegend=False,
                            marker=dict(size=10 if three else 20, color="crimson", symbol=symbol)), row=row, col=col)
        if three:
            fig.update_scenes(xaxis_title_text=axes[0], yaxis_title_text=axes[1], zaxis_title_text=axes[2], row=row, col=col)
        else:
            fig.update_xaxes(title_text=axes[0], row=row, col=col)
            fig.update_yaxes(title_text=axes[1], row=row, col=col)
    fig.update_layout(height=420 * rows, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def heatmap_figure(result: Exploration):
    """Cosine similarity per space; each panel spans its own range (given in its title)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = _grid(len(result.spaces))
    titles = []
    for space in result.spaces:
        off = result.similarity[space][~np.eye(len(result.words), dtype=bool)]
        titles.append(f"{SPACES[space].title} (cos {off.min():.2f} to {off.max():.2f})")
    fig = make_subplots(rows, cols, subplot_titles=titles)
    for n, space in enumerate(result.spaces):
        fig.add_trace(go.Heatmap(z=result.similarity[space], x=result.words, y=result.words, colorscale="Viridis",
                                 showscale=False, hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"),
                      row=n // cols + 1, col=n % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=420 * rows, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# ---------------------------------------------------------------- command line


def cmd_embed(args) -> int:
    spaces = list(SPACES) if "all" in (args.space or []) else (args.space or ["minilm"])
    projection = args.projection or ("anchors" if args.anchors else "pca")
    try:
        if args.neighbours < 1:
            raise InputError(f"--neighbours must be at least 1, got {args.neighbours}")
        result = explore(list(args.words), template=args.template, spaces=spaces, projection=projection,
                         dimensions=args.dimensions, anchor_from=(args.anchors or ["", ""])[0],
                         anchor_to=(args.anchors or ["", ""])[1], llm_layer=args.layer, diffusion_source=args.diffusion,
                         preset=args.preset)
    except (InputError, SpaceUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(args.neighbours), indent=2, ensure_ascii=False))
        return 0
    width = max(map(len, result.words)) + 2
    for space in result.spaces:
        print(f"\n{space} ({SPACES[space].kind}: {SPACES[space].title}) · {result.seconds[space]:.2f} s, "
              f"{result.cached[space]} cached")
        print(" " * width + "".join(f"{a[:16]:>18}" for a in result.axes[space]))
        for word, xyz in zip(result.words, result.coords[space]):
            print(f"{word:<{width}}" + "".join(f"{v:>18.4f}" for v in xyz))
        if len(result.words) <= 12:
            print("cosine similarity\n" + " " * width + "".join(f"{w[:8]:>9}" for w in result.words))
            for word, row in zip(result.words, result.similarity[space]):
                print(f"{word:<{width}}" + "".join(f"{v:>9.3f}" for v in row))
        print("nearest neighbours")
        for word in result.words:
            near = [r for r in result.neighbours(word, args.neighbours) if r["space"] == space]
            print(f"  {word} → " + ", ".join(f"{r['neighbour']} ({r['cosine']:.3f})" for r in near))
    for row in result.agreements():
        rho = "n/a" if row["spearman"] is None else f"{row['spearman']:.3f}"
        flipped = "n/a" if row["flipped"] is None else f"{row['flipped']:.1%}"
        print(f"\nagreement {row['space_a']} vs {row['space_b']}: Spearman {rho}, pair orders flipped {flipped}")
    return 0


def add_cli(subparsers) -> None:
    """Register `embed` on the CLI's subparsers (wordsworlds/__main__.py)."""
    p = subparsers.add_parser("embed", help="place words in meaning and appearance spaces and compare them")
    p.add_argument("words", nargs="+", help="words or quoted phrases (commas also separate)")
    p.add_argument("--space", action="append", choices=list(SPACES) + ["all"],
                   help="repeat for several (default: minilm; 'all' for every space)")
    p.add_argument("--projection", choices=proj.PROJECTIONS, help="default: pca, or anchors with --anchors")
    p.add_argument("--dimensions", type=int, choices=(2, 3), default=2)
    p.add_argument("--template", default="", help="e.g. 'a photo of a {}'")
    p.add_argument("--anchors", nargs=2, metavar=("FROM", "TO"), help="custom x axis, e.g. --anchors small large")
    p.add_argument("--layer", type=int, help="LLM hidden-state layer (default: the middle one)")
    p.add_argument("--diffusion", help="diffusers folder or Hub id (default: $WORDSWORLDS_DIFFUSION, else the preset's)")
    p.add_argument("--preset", help="model preset (default: $WORDSWORLDS_PRESET or tiny)")
    p.add_argument("--neighbours", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)
