"""Tab 1, at the speaker's pace: the last two-by-two run replayed step by step, rewound and branched.

Four endpoints over a kept run (its id comes back from `two_by_two`): `replay` (all four lanes at
one step, with what changed and which pixels a word painted), `play` (a slow-motion replay from a
step), `branch_text` (another word at one position, the next-token writer continues) and
`branch_image` (another prompt or seed from one denoising step on).
"""

from __future__ import annotations

import time

import gradio as gr

from .. import two_by_two as library
from ..errors import InputError, check_number
from ..gpu import on_gpu
from ..models import load_diffusion
from ..presets import Preset
from ..replay import NEW, Recording, RunStore
from ..world.scene import COLOURS, FUNCTION_WORDS, KINDS, POSITIONS, SIZES
from ..words.captions import CaptionFrame, Captioner
from ..worlds.diffusion import MAX_STEPS, RenderResult, StepFrame, decode_latents
from ..engines import load_painter
from .common import format_seconds, user_errors

EXAMPLE_BRANCH_PROMPT = "a large yellow sun on the left and a small blue boat on the right, on the sea"
SLOW_S = (0.05, 3.0)
WORD_KINDS = (COLOURS, KINDS, SIZES, POSITIONS)  # the slow-motion replay's seconds per step, least and most
CHANGE_COLOURS = {NEW: "#e600a0"}
REPLACED, CHOSEN, REWRITTEN = "replaced", "chosen instead", "written again"
BRANCH_COLOURS = {REPLACED: "#9ca3af", CHOSEN: "#f59e0b", REWRITTEN: "#e600a0"}


def describe_step(recording: Recording, step: int) -> str:
    """What each lane did at `step`, in one line a room can read."""
    lanes = recording.lengths
    at = {lane: min(step, length) for lane, length in lanes.items()}
    parts = []
    for lane, label, unit in (("words_next_token", "next-token words", "word"),
                              ("words_masked_diffusion", "masked diffusion", "pass"),
                              ("worlds_next_token", "painter", "token"),
                              ("worlds_denoising", "denoising", "step")):
        done = " (done)" if step >= lanes[lane] else ""
        parts.append(f"{label} **{unit} {at[lane]}** of {lanes[lane]}{done}")
    return (f"**Step {step}** · " + " · ".join(parts)
            + "<span class='ww-more'><br>Pink: what this step changed. A next-token lane changes one piece, and "
              "never again; denoising changes the whole picture at every step.</span>")


def token_choices(recording: Recording) -> tuple[list[tuple[str, int]], int | None]:
    """The prompt's tokens for the attention view (repeated words numbered), and a default: its first
    colour word, else its first content word."""
    seen: dict[str, int] = {}
    choices = []
    for index, token in enumerate(recording.tokens):
        seen[token] = seen.get(token, 0) + 1
        choices.append((token if seen[token] == 1 else f"{token} ({seen[token]})", index))
    default = next((i for i, t in enumerate(recording.tokens) if t in COLOURS), None)
    if default is None:
        default = next((i for i, t in enumerate(recording.tokens) if t not in FUNCTION_WORDS), 0 if choices else None)
    return choices, default


def caption_chips(frame: CaptionFrame, given: int = 0) -> list[tuple[str, str | None]]:
    """A branched caption: the words kept and the one chosen plain, what the model wrote after them marked."""
    return [(word, None if position < given - 1 else CHOSEN if position == given - 1 else REWRITTEN)
            for position, word in enumerate(library.caption_words(frame))]


class Replay:
    """The handlers (each an API endpoint of the same name) and the layout of the replay section."""

    def __init__(self, preset: Preset, runs: RunStore):
        self.preset, self.runs = preset, runs

    def _decoders(self):
        vae = load_diffusion(self.preset).pipe.vae
        return (lambda latents: decode_latents(vae, latents)), load_painter(self.preset).canvases

    def replay(self, run_id: str, step: int = 0, token: int | None = None):
        """Show every lane of a kept two-by-two run at one step, with what that step changed.

        Args:
            run_id: the id `two_by_two` returned for the run.
            step: 0 (before the first) to the run's longest lane; a lane that finished shows its end.
            token: a prompt token (as the diffusion text encoder reads it: its index, or the word itself for its
                first occurrence) whose cross-attention to show over the picture; empty for none.

        Returns:
            Next-token words, masked-diffusion words, the painter's canvas, the denoising guess of x0 with
            what changed tinted, the noisy x_t in pixels, the token's attention over the picture, and a
            line saying what each lane did.
        """
        with user_errors():
            recording = self.runs.get(run_id)
            decode, canvases = self._decoders()
            view = recording.view_at(step, decode, canvases, token)
            return (view.words_next_token, view.words_masked_diffusion, view.worlds_next_token,
                    view.worlds_denoising, view.noisy, view.attention, describe_step(recording, view.step))

    def play(self, run_id: str, step: int = 0, token: int | None = None, seconds_per_step: float = 0.4):
        """Replay a kept run in slow motion from `step` (from the start when it is at the end); Stop pauses.

        Args:
            run_id: the id `two_by_two` returned.
            step: where to start (0 to the run's longest lane).
            token: the prompt token whose attention to show, as in `replay`.
            seconds_per_step: 0.05 to 3.

        Returns:
            As `replay`, then the step shown.
        """
        with user_errors():
            recording = self.runs.get(run_id)
            start = recording.check_step(step)
            recording.check_token(token)
            pause = check_number("seconds_per_step", seconds_per_step, float, *SLOW_S)
            if start >= recording.steps:
                start = 0
            for shown in range(start, recording.steps + 1):
                began = time.perf_counter()
                yield *self.replay(run_id, shown, token), shown
                time.sleep(max(0.0, pause - (time.perf_counter() - began)))

    @on_gpu(duration=60)
    def branch_text(self, run_id: str, position: int = 2, word: str = "green"):
        """Rewind the next-token caption of a kept run to one word, write another there, and let the model
        continue from it (a next-token model can only continue: what came before stays).

        Args:
            run_id: the id `two_by_two` returned.
            position: the word to replace, 0 for the caption's first.
            word: the word to write there instead (one of the storybook world's words).

        Returns:
            The original caption, the branched caption, and its meter.
        """
        with user_errors():
            recording = self.runs.get(run_id)
            original = recording.captions["next_token"]
            words = library.caption_words(original)
            before = None
            for frame in library.branch_text(self.preset, recording.prompt, words, position, word):
                if before is None:  # the library has checked `position` by its first frame
                    before = [(w, REPLACED if i == int(position) else None) for i, w in enumerate(words)]
                yield (before, caption_chips(frame, int(position) + 1),
                       f"**{frame.step}** forward passes · **{format_seconds(frame.seconds)}**"
                       + (" · done: the first words stay as they were, the rest is written again" if frame.done else ""))

    @on_gpu(duration=60)
    def branch_image(self, run_id: str, at_step: int = 8, new_prompt: str = "", new_seed: int | None = None):
        """Rewind the denoising render of a kept run to step `at_step` and continue from that latent with
        another prompt or seed; the first steps repeat the original's exactly (same seed).

        Args:
            run_id: the id `two_by_two` returned.
            at_step: the steps kept from the original, 1 to its steps - 1.
            new_prompt: what the rest of the steps follow (empty: the original prompt).
            new_seed: the noise still to draw (empty: the original seed; only the stochastic samplers,
                euler-ancestral, ddpm and lcm, draw noise after the first step).

        Returns:
            The original picture, the branch's picture (its x0 guess while it runs), and its meter.
        """
        with user_errors():
            recording = self.runs.get(run_id)
            original = recording.render.image
            stream = library.branch_image(self.preset, recording.prompt, recording.options, at_step, new_prompt or "",
                                          new_seed)
            for item in stream:
                if isinstance(item, StepFrame) and item.x0 is not None:
                    yield original, item.x0, (f"step **{item.step}** of {item.total_steps}"
                                              + (" (the original's)" if item.step <= int(at_step) else " (the branch)"))
                elif isinstance(item, RenderResult):
                    yield original, item.image, (f"**{item.stats.unet_evaluations}** forward passes · "
                                                 f"**{format_seconds(item.stats.total_s)}** · done: steps 1 to "
                                                 f"{int(at_step)} are the original's, the rest follow the change")

    def candidates(self, run_id: str, position: int | None):
        """The words the next-token writer weighed at `position` (a UI helper: fills the dropdown)."""
        try:
            recording = self.runs.get(run_id)
            frame = recording.captions["next_token"]
            words = library.caption_words(frame)
            position = check_number("position", position, int, 0, max(len(words) - 1, 0))
        except InputError:
            return gr.Dropdown(choices=[], value=None)
        vocabulary = self._vocabulary()
        options = [(f"{w} ({p:.0%})", w) for w, p in frame.candidates[position] if w in vocabulary]
        # The model is usually sure of its word: offer the other words of the same kind too (a colour for a colour).
        kind = next((k for k in WORD_KINDS if words[position] in k), ())
        listed = {value for _, value in options}
        options += [(w, w) for w in kind if w not in listed and w in vocabulary]
        others = [value for _, value in options if value != words[position]]
        default = next((w for w in others if w in kind), others[0] if others else None)
        return gr.Dropdown(choices=options, value=default)

    def _vocabulary(self) -> set[str]:
        return set(Captioner.load(self.preset, "next_token").tokenizer.get_vocab())

    def after_run(self, run_id: str):
        """When a run is kept: the scrubber's range, the attention's words, the last step shown."""
        try:
            recording = self.runs.get(run_id)
        except InputError:
            return gr.Slider(), gr.Dropdown(), *([gr.skip()] * 7)
        choices, default = token_choices(recording)
        return (gr.Slider(maximum=recording.steps, value=recording.steps), gr.Dropdown(choices=choices, value=default),
                *self.replay(run_id, recording.steps, default))

    def build(self, run_id: gr.Textbox) -> tuple:
        """The section, under the four lanes; returns the events that `run_id`'s change starts."""
        with gr.Accordion("Replay step by step, rewind and branch", open=True, elem_id="ww-replay"):
            gr.Markdown("Every run is kept: step through all four lanes together, pause anywhere, replay in slow "
                        "motion, see which pixels each word painted, and change the course of a run.",
                        elem_classes="ww-caption")
            with gr.Row(equal_height=False):
                # The widest a run can be (its longest lane: up to 100 denoising steps); each run narrows it.
                step = gr.Slider(0, MAX_STEPS, value=0, step=1, label="Step", scale=4, min_width=200, elem_id="ww-replay-step")
                with gr.Row(equal_height=False, elem_classes="ww-run-row", scale=2):
                    play = gr.Button("▶ Slow motion", min_width=110, elem_id="ww-replay-play")
                    pause = gr.Button("❚❚ Pause", min_width=80, elem_id="ww-replay-pause")
                seconds = gr.Slider(*SLOW_S, value=0.4, step=0.05, label="Seconds per step", scale=1, min_width=120,
                                    visible=False)
            about = gr.Markdown(label="What each lane did at this step", elem_classes="ww-meter", elem_id="ww-replay-about")
            with gr.Row(equal_height=False, elem_classes="ww-lanes"):
                words_nt = gr.HighlightedText(show_inline_category=False, label="Words, next-token (click a word to branch)", show_legend=False,
                                              combine_adjacent=False, color_map=CHANGE_COLOURS,
                                              elem_id="ww-replay-words-next-token", elem_classes="ww-words")
                words_md = gr.HighlightedText(show_inline_category=False, label="Words, masked diffusion", show_legend=False, combine_adjacent=False,
                                              color_map=CHANGE_COLOURS, elem_id="ww-replay-words-masked-diffusion",
                                              elem_classes="ww-words")
            # Four pictures in a row on a desktop, two by two on a phone (each keeps 150 px).
            with gr.Row(equal_height=False, elem_classes="ww-lanes ww-replay-pictures"):
                picture = dict(type="pil", height=150, buttons=[], elem_classes="ww-pixels", min_width=150)
                painter = gr.Image(label="Painter", elem_id="ww-replay-painter", **picture)
                denoised = gr.Image(label="x0 guess", elem_id="ww-replay-x0", **picture)
                noisy = gr.Image(label="Noisy x_t", elem_id="ww-replay-noisy", **picture)
                attention = gr.Image(label="Attention", elem_id="ww-replay-attention", **picture)
            gr.Markdown("<small>Painter: its canvas after this step, the token just written outlined. x0 guess: the "
                        "denoiser's guess of the finished picture, pink where this step changed it. Noisy x_t: the "
                        "latent the U-Net was given at this step, decoded to pixels. Attention: where the word below "
                        "acts on the picture at this step.</small>", elem_classes="ww-caption ww-more")
            token = gr.Dropdown(choices=[], label="Which pixels did this word paint? (cross-attention at this step)",
                                allow_custom_value=True, elem_id="ww-replay-token")
            with gr.Group():
                gr.Markdown("**Branch the words**: a next-token model can only continue. Pick a word of its caption, "
                            "another word for it, and it writes the rest again.", elem_classes="ww-caption")
                with gr.Row(equal_height=False):
                    position = gr.Number(value=2, precision=0, minimum=0, label="Word (0 = first)", min_width=100)
                    word = gr.Dropdown(choices=[], label="Instead", allow_custom_value=True, min_width=120)
                    branch_words = gr.Button("Branch the words", min_width=120, elem_id="ww-branch-words")
                with gr.Row(equal_height=False, elem_classes="ww-lanes"):
                    words_before = gr.HighlightedText(show_inline_category=False, label="Original", show_legend=False, combine_adjacent=False,
                                                      color_map=BRANCH_COLOURS, elem_classes="ww-words")
                    words_after = gr.HighlightedText(show_inline_category=False, label="Branch", show_legend=True, combine_adjacent=False,
                                                     color_map=BRANCH_COLOURS, elem_classes="ww-words",
                                                     elem_id="ww-branch-words-after")
                words_meter = gr.Markdown(label="Compute meter (branched words)", elem_classes="ww-meter")
            with gr.Group():
                gr.Markdown("**Branch the picture**: keep the first steps of the render, then follow another prompt "
                            "(or seed) from that latent.", elem_classes="ww-caption")
                with gr.Row(equal_height=False):
                    at_step = gr.Number(value=8, precision=0, minimum=1, label="At step", min_width=90)
                    new_prompt = gr.Textbox(label="New prompt", value=EXAMPLE_BRANCH_PROMPT, scale=3, min_width=200)
                    new_seed = gr.Number(value=None, precision=0, minimum=0, label="New seed (optional)", min_width=110)
                    branch_picture = gr.Button("Branch the picture", min_width=120, elem_id="ww-branch-picture")
                with gr.Row(equal_height=False, elem_classes="ww-lanes ww-images"):
                    image_before = gr.Image(label="Original", **picture)
                    image_after = gr.Image(label="Branch", elem_id="ww-branch-picture-after",
                                           **(picture | {"elem_classes": "ww-pixels"}))
                picture_meter = gr.Markdown(label="Compute meter (branched picture)", elem_classes="ww-meter")

        views = [words_nt, words_md, painter, denoised, noisy, attention, about]
        kept = run_id.change(self.after_run, run_id, [step, token, *views], api_visibility="private")
        kept.then(self.candidates, [run_id, position], word, api_visibility="private")
        step.input(self.replay, [run_id, step, token], views, concurrency_limit=None, trigger_mode="always_last")
        token.input(self.replay, [run_id, step, token], views, api_visibility="private", concurrency_limit=None)
        playing = play.click(self.play, [run_id, step, token, seconds], [*views, step], concurrency_limit=None)
        pause.click(None, cancels=[playing])
        words_nt.select(_chosen, None, position, api_visibility="private").then(
            self.candidates, [run_id, position], word, api_visibility="private")
        position.input(self.candidates, [run_id, position], word, api_visibility="private")
        branch_words.click(self.branch_text, [run_id, position, word], [words_before, words_after, words_meter],
                           concurrency_limit=None if self.preset.batched else 2)
        branch_picture.click(self.branch_image, [run_id, at_step, new_prompt, new_seed],
                             [image_before, image_after, picture_meter],
                             concurrency_limit=None if self.preset.batched else 2)
        return kept


def _chosen(event: gr.SelectData) -> int:
    return event.index
