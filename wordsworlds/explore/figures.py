"""The explorer's figures: plotly drawings of an Exploration (no Gradio here).

    >>> from wordsworlds.explore.figures import scatter_figure
    >>> scatter_figure(result).show()                 # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .explorer import Exploration
from .spaces import SPACES


# Label positions taken in turn, so neighbouring words do not print on top of each other.
LABEL_POSITIONS = ("top center", "bottom center", "middle right", "middle left")


def _grid(count: int) -> tuple[int, int]:
    # At most two panels a row: three made thin columns on a phone.
    cols = min(count, 2)
    return -(-count // cols), cols


def scatter_figure(result: Exploration) -> go.Figure:
    """One panel per space; colour follows the first space's x axis, so agreement shows as order."""
    rows, cols = _grid(len(result.spaces))
    three = result.dimensions == 3
    fig = make_subplots(rows, cols, specs=[[{"type": "scene" if three else "xy"}] * cols] * rows,
                        subplot_titles=[f"{SPACES[s].short} ({SPACES[s].kind})" for s in result.spaces])
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
        positions = [LABEL_POSITIONS[i % len(LABEL_POSITIONS)] for i in range(len(result.words))]
        fig.add_trace(trace(**coords, text=result.words, mode=labels, textposition=positions if not three else "top center",
                            textfont=dict(size=11), hovertemplate=hover,
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
    fig.update_annotations(font_size=12)  # the subplot titles: two fit side by side on a phone
    return fig


def heatmap_figure(result: Exploration) -> go.Figure:
    """Cosine similarity per space; each panel spans its own range (given in its title)."""
    rows, cols = _grid(len(result.spaces))
    titles = []
    for space in result.spaces:
        off = result.similarity[space][~np.eye(len(result.words), dtype=bool)]
        titles.append(f"{SPACES[space].short}: cos {off.min():.2f} to {off.max():.2f}")
    fig = make_subplots(rows, cols, subplot_titles=titles)
    for n, space in enumerate(result.spaces):
        fig.add_trace(go.Heatmap(z=result.similarity[space], x=result.words, y=result.words, colorscale="Viridis",
                                 showscale=False, hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"),
                      row=n // cols + 1, col=n % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=420 * rows, margin=dict(l=10, r=10, t=40, b=10))
    return fig
