"""Tab 1, "Words vs worlds": the two-by-two (ui/two_by_two.py), then the chat model beside the picture.

Handlers are generators: each `yield` is one frame the browser shows. Three endpoints:
`generate_text` (words), `render_image` (worlds), `compare` (both at once, one timeline).
"""

from __future__ import annotations

import random
import time

import gradio as gr

from ..compare import run_side_by_side, timeline_row
from ..engines import streaming_engines
from ..errors import check_prompt
from ..gpu import on_gpu
from ..presets import Preset
from ..serving import InLine
from ..world.scene import world_note
from ..words.next_token import MAX_NEW_TOKENS_CAP, GenerationStats, validate_options
from ..worlds.diffusion import (
    MAX_STEPS, SCHEDULERS, RenderResult, RenderStats, StepFrame, validate_render_options,
)
from .common import Pace, format_seconds, user_errors
from .inside import InsideDiffusion
from .two_by_two import TwoByTwo

EXAMPLE_PROMPTS = [
    "a large red cat on the left and a small blue boat on the right, on the sea",
    "a big yellow sun at the top, at sunset",
    "two small white clouds in the middle and a large brown house below, on the grass",
    "three small yellow stars at the top and a large white snowman in the center, in the snow at night",
    "a sunset over the sea",
]


# ----------------------------------------------------------------------------- views of the results


def describe_text_stats(stats: GenerationStats) -> str:
    return (
        f"**{stats.new_tokens}** tokens · **{stats.tokens_per_s:.1f}** tokens/s · "
        f"first token after **{format_seconds(stats.time_to_first_token_s)}** · "
        f"**{stats.forward_passes}** forward passes (1 for the prompt's {stats.prompt_tokens} tokens, "
        f"then 1 per new token){batch_note(stats.batch_size, 'forward pass')} · stopped by {stats.stopped_by or '…'}"
    )


def batch_note(batch_size: int, what: str) -> str:
    """How many requests shared this run's model calls (serving.py batches everyone's steps together)."""
    return f", each {what} shared with up to {batch_size - 1} other runs" if batch_size > 1 else ""


def candidates(step: dict) -> dict:
    return {text if text.strip() else repr(text): prob for text, prob in step["top"]}


def token_record(step) -> dict:
    return {"index": step.index, "text": step.text, "prob": step.prob, "top": step.top}


END_CHIP = "⏎ end"


def add_token(shaded: list, records: list, step) -> None:
    """One chip per piece of text: a token that only starts a character (its text is "") joins the
    token that completes it, so a chip never shows half a character; the end token shows as END_CHIP."""
    if step.end:
        shaded.append((END_CHIP, round(step.prob, 3)))
    elif step.text:
        shaded.append((step.text, round(step.prob, 3)))
    else:
        return
    records.append(token_record(step))


STOPPED = "stopped: Stop pressed"


def mark_stopped(text_meter: str, image_meter: str):
    """The meters after Stop: say that the run was stopped, where it had not finished."""
    if text_meter and "stopped by …" in text_meter:
        text_meter = text_meter.replace("stopped by …", STOPPED)
    if image_meter and " · done" not in image_meter and STOPPED not in image_meter:
        first, _, rest = image_meter.partition("\n\n")
        image_meter = f"{first} · {STOPPED}" + (f"\n\n{rest}" if rest else "")
    return text_meter, image_meter


def describe_render_stats(stats: RenderStats, total_steps: int, guidance_scale: float, note: str = "") -> str:
    per_step = 2 if guidance_scale > 1 else 1
    return (
        f"step **{stats.steps}/{total_steps}** · **{stats.unet_evaluations}** U-Net evaluations "
        f"({per_step} per step{' with guidance' if per_step == 2 else ''}{batch_note(stats.batch_size, 'U-Net call')}) · "
        f"**{format_seconds(stats.mean_step_s)}** per step · total **{format_seconds(stats.total_s)}**"
        + (f" · {stats.stopped_by}" if stats.stopped_by else "")
        + (f"\n\n{note}" if note else "")
    )


def inspect_token(steps: list[dict], evt: gr.SelectData):
    """The candidates the model weighed for the clicked token."""
    if not steps or evt.index is None:
        return {}
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return candidates(steps[min(int(index), len(steps) - 1)])


def new_seed() -> int:
    return random.randrange(2**31)


# ----------------------------------------------------------------------------- the tab


class WordsVsWorldsTab:
    """Tab 1's handlers (each method an API endpoint of the same name) and its layout."""

    def __init__(self, preset: Preset):
        self.preset = preset

    def note(self, prompt: str) -> str:
        """A word under the image when the prompt is outside what the diffusion model knows."""
        return world_note(prompt) if self.preset.storybook_world else ""

    @on_gpu(duration=120)
    def generate_text(self, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0, top_k: int = 0,
                      top_p: float = 1.0, seed: int | None = None):
        """Write a reply with the language model, one token at a time, each with its probability.

        Args:
            prompt: what to say to the model (1 to 2,000 characters).
            max_new_tokens: the most tokens to write (1 to 256).
            temperature: 0 for greedy, deterministic decoding; up to 5 for sampling.
            top_k: sample only among the k likeliest tokens (0: off).
            top_p: sample only among the likeliest tokens that together reach this probability (0 to 1].
            seed: seed of the sampling (0 to 2**32-1); no effect when greedy.

        Returns:
            The text as (token, probability) pairs, the candidates of the latest token, and the compute meter.
        """
        with user_errors():
            prompt = check_prompt(prompt)
            options = validate_options(max_new_tokens, temperature, top_k, top_p, seed)
            stats = GenerationStats()
            steps, shaded = [], []
            engine, _ = streaming_engines(self.preset)
            pace = Pace(engine)
            for step in engine.stream(prompt, options, stats=stats, line_updates=True):
                if isinstance(step, InLine):  # waiting for a place in the batch: say where, and how long
                    yield shaded, {}, step.message(), steps
                    continue
                add_token(shaded, steps, step)
                if pace.due():
                    yield shaded, candidates(steps[-1]) if steps else {}, describe_text_stats(stats), steps
            yield shaded, candidates(steps[-1]) if steps else {}, describe_text_stats(stats), steps

    @on_gpu(duration=120)
    def render_image(self, prompt: str, steps: int = 20, guidance_scale: float = 5.0, negative_prompt: str = "",
                     seed: int = 0, scheduler: str = "dpm++"):
        """Draw a picture with the diffusion model, step by step from noise.

        Args:
            prompt: what to draw (1 to 2,000 characters); the offline model knows only its storybook world.
            steps: denoising steps (1 to 100).
            guidance_scale: classifier-free guidance (0 to 30; above 1, two U-Net passes per step).
            negative_prompt: what to steer away from.
            seed: seed of the starting noise (0 to 2**32-1): the same seed gives the same picture.
            scheduler: the sampler: dpm++, ddim, euler, euler-ancestral, ddpm or lcm.

        Returns:
            The noisy latent, the model's guess of the clean image at the latest step, the final image, and the meter.
        """
        with user_errors():
            prompt = check_prompt(prompt)
            options = validate_render_options(steps, guidance_scale, negative_prompt, seed, scheduler)
            note = self.note(prompt)
            noisy = x0 = None
            _, engine = streaming_engines(self.preset)
            pace = Pace(engine)
            for item in engine.stream(prompt, options, line_updates=True, skip_stale=True):
                if isinstance(item, InLine):
                    yield None, None, None, item.message()
                elif isinstance(item, StepFrame):
                    # Between full decodes (see worlds.diffusion.PREVIEW_SHARE) the x0 view keeps its last
                    # decoded picture. Every output is sent each time, unchanged ones too: Gradio sends only
                    # what changed, and its gr.skip() costs more (it rebuilds the component) than a value.
                    noisy, x0 = item.noisy, item.x0 if item.x0_decoded else x0
                    if pace.due():
                            yield noisy, x0, None, describe_render_stats(item.stats, options.steps,
                                                                     options.guidance_scale, note)
                else:
                    for warning in item.warnings:
                        gr.Warning(warning)
                    # The last message holds every output: it is what an API caller receives.
                    yield noisy, x0, item.image, describe_render_stats(item.stats, options.steps,
                                                                       options.guidance_scale, note)

    @on_gpu(duration=120)
    def compare(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, steps: int = 20, guidance_scale: float = 5.0, negative_prompt: str = "",
                seed: int = 0, scheduler: str = "dpm++"):
        """Both models on one prompt at once: the text token by token beside the picture step by step,
        with a shared timeline (arguments as in generate_text and render_image)."""
        with user_errors():
            prompt = check_prompt(prompt)
            text_options = validate_options(max_new_tokens, temperature, top_k, top_p, seed)
            render_options = validate_render_options(steps, guidance_scale, negative_prompt, seed, scheduler)
            text_stats = GenerationStats()
            shaded, records, timeline = [], [], []
            note = self.note(prompt)
            started = time.perf_counter()
            # Every output is sent each time, unchanged ones too: Gradio sends only what changed, and its
            # gr.skip() costs more (it rebuilds the component) than a value.
            meters = {"words": "", "worlds": ""}
            noisy = x0 = final = None
            pace = Pace(*streaming_engines(self.preset))

            def outputs():
                return (shaded, candidates(records[-1]) if records else {}, meters["words"], records, noisy, x0, final,
                        meters["worlds"], timeline)

            for side, item in run_side_by_side(self.preset, prompt, text_options, render_options, text_stats=text_stats,
                                               line_updates=True):
                row = timeline_row(item, time.perf_counter() - started)
                if row:
                    timeline.append(row)
                if isinstance(item, InLine):  # waiting for a place in that model's batch
                    meters[side] = item.message()
                elif side == "words":
                    add_token(shaded, records, item)
                    meters["words"] = describe_text_stats(text_stats)
                elif isinstance(item, StepFrame):
                    noisy, x0 = item.noisy, item.x0 if item.x0_decoded else x0
                    meters["worlds"] = describe_render_stats(item.stats, item.total_steps,
                                                             render_options.guidance_scale, note)
                elif isinstance(item, RenderResult):
                    for warning in item.warnings:
                        gr.Warning(warning)
                    final = item.image
                    meters["worlds"] = describe_render_stats(item.stats, render_options.steps,
                                                             render_options.guidance_scale, note)
                if isinstance(item, (InLine, RenderResult)) or pace.due():
                    yield outputs()
            # The last message holds every output (what an API caller receives), with the words' final meter.
            meters["words"] = describe_text_stats(text_stats)
            yield outputs()

    def build(self) -> None:
        """Lay out the tab inside an open gr.Blocks and wire its events: the four lanes first (ui/two_by_two.py),
        then, one tap away, the chat model beside the picture. Phone first: the prompt, Run, then the picture
        and the text on one screen, their meters under them; settings and examples below."""
        recipe = self.preset.recipe
        TwoByTwo(self.preset).build()
        # The chat LLM keeps its place, one tap away: what sits beside the picture in the four lanes talks
        # about the picture; the chat model answers as a chat model does.
        with gr.Accordion("The chat model beside the picture", open=False, elem_id="ww-chat-side"):
            gr.Markdown(
                "One prompt, two ways of making things: the **language model** commits to one token at a time, left "
                "to right, for good; the **diffusion model** refines the whole canvas from noise at every step.",
                elem_classes="ww-intro",
            )
            with gr.Row(equal_height=False):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPTS[0], lines=2, max_lines=6, scale=4, min_width=240)
                with gr.Column(scale=1, min_width=160):
                    run_both = gr.Button("Run both", variant="primary")
                    with gr.Row():
                        run_words = gr.Button("Words only", size="sm", min_width=60)
                        run_worlds = gr.Button("Worlds only", size="sm", min_width=60)
                        stop = gr.Button("Stop", variant="stop", size="sm", min_width=50)
            with gr.Row(equal_height=False):
                with gr.Column(min_width=300):
                    gr.Markdown("**Worlds: denoising.** <span class='ww-more'>Left, the noisy latent; middle, the "
                                "model's guess of the clean image at this step.</span>", elem_classes="ww-caption")
                    with gr.Row(elem_classes="ww-images"):
                        noisy = gr.Image(label="Noisy xₜ", type="pil", height=130, buttons=[], min_width=80,
                                         elem_classes="ww-pixels")
                        x0 = gr.Image(label="Guess x₀", type="pil", height=130, buttons=[], min_width=80,
                                      elem_classes="ww-pixels")
                        # PNG here, WebP for the previews: two outputs never point at one cached file.
                        final = gr.Image(label="Final", type="pil", height=130, min_width=80, format="png",
                                         buttons=["download"], elem_classes="ww-pixels")
                    image_meter = gr.Markdown(label="Compute meter (worlds)", elem_id="ww-image-meter", elem_classes="ww-meter")
                with gr.Column(min_width=300):
                    gr.Markdown("**Words: next-token prediction.** <span class='ww-more'>Each token shaded by its "
                                "probability; tap one to see what it beat.</span>", elem_classes="ww-caption")
                    tokens = gr.HighlightedText(label="Text, token by token (with probabilities)", show_label=False,
                                                combine_adjacent=False, show_legend=False)
                    text_meter = gr.Markdown(label="Compute meter (words)", elem_id="ww-text-meter", elem_classes="ww-meter")
                    top = gr.Label(label="Candidates for the latest (or tapped) token", num_top_classes=5,
                                   show_heading=False)
            gr.Examples(EXAMPLE_PROMPTS, inputs=prompt)
            with gr.Row():
                with gr.Accordion("Decoding (words)", open=False):
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS_CAP, value=32, step=1, label="Max new tokens")
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy, deterministic)")
                    top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = off)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                with gr.Accordion("Sampling (worlds)", open=False):
                    steps = gr.Slider(1, MAX_STEPS, value=recipe.steps, step=1, label="Steps")
                    guidance_scale = gr.Slider(0, 15, value=recipe.guidance_scale, step=0.5,
                                               label="Guidance scale (>1: two U-Net passes per step)")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=recipe.scheduler, label="Scheduler")
                    negative_prompt = gr.Textbox(label="Negative prompt", value="")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image noise; text only when sampling)",
                                 scale=3)
                reseed = gr.Button("🎲 New seed", size="sm", scale=1)
            gr.Markdown(
                "*Same seed, same result:* run twice and both sides repeat exactly (greedy text; the same starting "
                "noise). Raise the temperature or draw a new seed and both change."
            )
            with gr.Accordion("Timeline: token t beside step t", open=False):
                timeline = gr.Dataframe(headers=["what", "#", "time (s)", "detail"], label="Timeline", interactive=False,
                                        wrap=True)
        records = gr.State([])
        InsideDiffusion(self.preset).build(prompt)

        # Batched, the engines' step loops admit (up to serving.CAPACITY) and refuse; alone, two at a time.
        limit = None if self.preset.batched else 2
        text_inputs = [prompt, max_new_tokens, temperature, top_k, top_p, seed]
        image_inputs = [prompt, steps, guidance_scale, negative_prompt, seed, scheduler]
        events = [
            run_words.click(self.generate_text, text_inputs, [tokens, top, text_meter, records], concurrency_limit=limit),
            run_worlds.click(self.render_image, image_inputs, [noisy, x0, final, image_meter], concurrency_limit=limit),
            run_both.click(
                self.compare,
                [prompt, max_new_tokens, temperature, top_k, top_p, steps, guidance_scale, negative_prompt, seed,
                 scheduler],
                [tokens, top, text_meter, records, noisy, x0, final, image_meter, timeline],
                concurrency_limit=limit,
            ),
        ]
        # First cancel, then mark: marked while cancelling, a last streamed frame could still overwrite the mark.
        stop.click(None, cancels=events).then(mark_stopped, [text_meter, image_meter], [text_meter, image_meter],
                                              api_visibility="private")
        reseed.click(new_seed, outputs=seed, api_visibility="private")
        tokens.select(inspect_token, inputs=[records], outputs=[top], api_visibility="private")
