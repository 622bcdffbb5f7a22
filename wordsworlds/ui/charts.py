"""Plotly figures the tabs show; plain functions of plain data (no Gradio here)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def noise_schedule_figure(signal: np.ndarray, noise: np.ndarray, timestep: int) -> go.Figure:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) over t, with the chosen t marked."""
    t = np.arange(len(signal))
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=t, y=signal, name="signal  √ᾱₜ", line=dict(color="#2b6cb0")))
    figure.add_trace(go.Scatter(x=t, y=noise, name="noise  √(1-ᾱₜ)", line=dict(color="#c05621")))
    figure.add_vline(x=timestep, line_dash="dash", line_color="#444")
    figure.add_trace(
        go.Scatter(x=[timestep, timestep], y=[signal[timestep], noise[timestep]], mode="markers",
                   marker=dict(size=10, color=["#2b6cb0", "#c05621"]), showlegend=False,
                   hovertemplate="t=%{x}<br>%{y:.3f}<extra></extra>")
    )
    figure.update_layout(
        height=300, margin=dict(l=40, r=10, t=30, b=40), xaxis_title="timestep t", yaxis_range=[0, 1.05],
        title=f"t = {timestep}: {signal[timestep]:.2f} signal, {noise[timestep]:.2f} noise",
        legend=dict(orientation="h", y=-0.3),
    )
    return figure


def score_figure(scores: list[float], labels: list[str] | None = None) -> go.Figure:
    """A round-by-round score chart (the hybrid loop)."""
    rounds = list(range(1, len(scores) + 1))
    figure = go.Figure(go.Scatter(x=rounds, y=scores, mode="lines+markers", text=labels,
                                  hovertemplate="round %{x}: %{y:.2f}<br>%{text}<extra></extra>"))
    figure.update_layout(height=260, margin=dict(l=40, r=10, t=30, b=40), xaxis_title="round",
                         yaxis_title="score", yaxis_range=[0, 1.05], xaxis_dtick=1)
    return figure
