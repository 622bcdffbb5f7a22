"""Tab 1, "Words vs worlds": one prompt, the text streaming token by token with its odds.

Handlers are plain generators: each `yield` is one frame the browser shows.
"""

from __future__ import annotations

import gradio as gr

from ..text import MAX_NEW_TOKENS_CAP, GenerationStats, TextGenerator, validate_options, validate_prompt
from .common import format_seconds, user_errors

EXAMPLE_PROMPTS = [
    "Describe a sunset over the sea in one sentence.",
    "A large red circle on the left and a small blue square on the right.",
    "Explain how a diffusion model makes a picture, in two sentences.",
    "Once upon a time, a robot",
]


def describe_stats(stats: GenerationStats) -> str:
    return (
        f"**{stats.new_tokens}** tokens · **{stats.tokens_per_s:.1f}** tokens/s · "
        f"first token after **{format_seconds(stats.time_to_first_token_s)}** · "
        f"**{stats.forward_passes}** forward passes (1 for the prompt's {stats.prompt_tokens} tokens, "
        f"then 1 per new token) · stopped by {stats.stopped_by or '…'}"
    )


def candidates(step: dict) -> dict:
    return {text if text.strip() else repr(text): prob for text, prob in step["top"]}


def generate_text(prompt: str, max_new_tokens: int = 48, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int | None = None):
    """Stream a reply token by token: (tokens shaded by probability, top candidates of the latest token, stats, steps)."""
    with user_errors():
        prompt = validate_prompt(prompt)
        options = validate_options(max_new_tokens, temperature, top_k, top_p, seed)
    generator = TextGenerator.load()
    stats = GenerationStats()
    steps, shaded = [], []
    for step in generator.stream(prompt, options, stats=stats):
        record = {"index": step.index, "text": step.text, "prob": step.prob, "top": step.top}
        steps.append(record)
        shaded.append((step.text, round(step.prob, 3)))
        yield shaded, candidates(record), describe_stats(stats), steps
    yield shaded, candidates(steps[-1]) if steps else {}, describe_stats(stats), steps


def inspect_token(steps: list[dict], evt: gr.SelectData):
    """The candidates the model weighed for the clicked token."""
    if not steps or evt.index is None:
        return {}
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return candidates(steps[min(int(index), len(steps) - 1)])


def build() -> None:
    """Lay out the tab inside an open gr.Blocks and wire its events."""
    gr.Markdown(
        "A language model **commits to one token at a time**, left to right. Each token is shaded by the "
        "probability the model gave it; click one to see what it beat."
    )
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPTS[0], lines=2, max_lines=6, scale=4)
        with gr.Column(scale=1, min_width=160):
            run = gr.Button("Generate", variant="primary")
            stop = gr.Button("Stop", variant="stop")
    gr.Examples(EXAMPLE_PROMPTS, inputs=prompt)
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("### Words: next-token prediction")
            tokens = gr.HighlightedText(label="Text, token by token", combine_adjacent=False, show_legend=False)
            top = gr.Label(label="Candidates for the latest (or clicked) token", num_top_classes=5)
            stats = gr.Markdown()
            with gr.Accordion("Decoding", open=False):
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS_CAP, value=48, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy, deterministic)")
                top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = off)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                seed = gr.Number(value=0, precision=0, label="Seed (sampling only)")
        steps = gr.State([])

    event = run.click(
        generate_text,
        inputs=[prompt, max_new_tokens, temperature, top_k, top_p, seed],
        outputs=[tokens, top, stats, steps],
        concurrency_limit=2,
    )
    prompt.submit(
        generate_text,
        inputs=[prompt, max_new_tokens, temperature, top_k, top_p, seed],
        outputs=[tokens, top, stats, steps],
        api_visibility="private",
        concurrency_limit=2,
    )
    stop.click(None, cancels=[event])
    tokens.select(inspect_token, inputs=[steps], outputs=[top], api_visibility="private")
