"""Tab 1's first section, the two-by-two: one prompt, four lanes, next-token and denoising on words and worlds.

Three endpoints: `two_by_two` (all four lanes), `fill_blanks` (the words lanes on a caption with
blanks), `repaint` (the worlds lanes change one region of their picture).
"""

from __future__ import annotations

import gradio as gr

from .. import two_by_two as library
from ..engines import streaming_engines, two_by_two_engines
from ..errors import check_prompt
from ..gpu import on_gpu
from ..presets import Preset
from ..replay import RunStore
from ..serving import InLine
from ..words.captions import BLANK, END, CaptionFrame
from ..worlds.diffusion import MAX_STEPS, SCHEDULERS, RenderResult, StepFrame, validate_render_options
from ..worlds.painter import PaintFrame
from ..worlds.repaint import RepaintFrame
from .common import Pace, format_seconds, scroll_into_view, user_errors
from .replay import Replay

EXAMPLE_BLANKS = "a ___ blue ___ on the right, on the sea at ___"
EXAMPLE_NEW_PROMPT = "a large yellow sun on the left and a small blue boat on the right, on the sea"
PLACES = ("left", "right", "top", "bottom", "center")
MASKED = "▢"


# ----------------------------------------------------------------------------- views of the frames


def caption_chips(frame: CaptionFrame) -> list[tuple[str, float | None]]:
    """One chip per caption position up to the caption's end: a committed word shaded by its probability,
    a word given by the template unshaded, a masked position as an empty box."""
    chips = []
    for word, probability, fixed in zip(frame.words, frame.probabilities, frame.fixed or [False] * len(frame.words)):
        if word == END:
            break
        if word is None:
            if frame.process == "next_token":
                break  # not written yet: a left-to-right model has nothing there
            chips.append((MASKED, None))
        else:
            chips.append((word, None if fixed else round(probability, 3)))
    return chips


def meter(passes: int, seconds: float, done: bool, how: str) -> str:
    """A lane's compute meter: forward passes and time first (all a phone shows), then how the process works."""
    return (f"**{passes}** forward pass{'' if passes == 1 else 'es'} · **{format_seconds(seconds)}**"
            + (" · done" if done else "")
            + f" <span class='ww-more'>({how})</span>")


def describe_caption(frame: CaptionFrame, given: list[str | None] | None = None) -> str:
    how = "one word per pass, each final" if frame.process == "next_token" else \
        "every position predicted at each pass, the surest committed"
    line = meter(frame.step, frame.seconds, frame.done, how)
    if given and frame.done:
        kept = [w == g for w, g in zip(frame.words, given) if g is not None]
        if frame.process == "next_token":
            written = len(frame.caption.split())
            ending = "" if written == len(given) else f", and it wrote {written} words where the template has {len(given)}"
            line += (f"\n\nKept **{sum(kept)} of {len(kept)}** given words{ending}: a left-to-right model gets only "
                     "the words before the first blank and cannot look ahead to the rest.")
        else:
            line += f"\n\nFilled the blanks in place; the {len(kept)} given words stay as given."
    return line


def describe_paint(frame: PaintFrame, note: str = "") -> str:
    return (meter(frame.step, frame.seconds, frame.done, "one image token per pass, row by row, each final")
            + (f"\n\n{note}" if note else ""))


def describe_denoise(step: int, total: int, passes: int, seconds: float, done: bool, note: str = "") -> str:
    return (meter(passes, seconds, done, f"step {step} of {total}, every pixel refined at each step")
            + (f"\n\n{note}" if note else ""))


def given_words(blanks: str) -> list[str | None]:
    return [None if BLANK.match(w) else w.lower() for w in blanks.split()]


# ----------------------------------------------------------------------------- the section


class TwoByTwo:
    """The handlers (each an API endpoint of the same name) and the layout of the two-by-two."""

    def __init__(self, preset: Preset):
        self.preset = preset
        self.runs = RunStore()  # the finished runs, for replays and branches (ui/replay.py)

    @on_gpu(duration=120)
    def two_by_two(self, prompt: str, steps: int = 20, guidance_scale: float = 5.0, seed: int = 0,
                   scheduler: str = "dpm++"):
        """One prompt, four lanes: words and worlds, each made by next-token prediction and by denoising.

        Args:
            prompt: the scene to caption and draw (1 to 2,000 characters; the caption models and the painter
                read at most 46 and 38 words).
            steps: denoising steps of the diffusion model (1 to 100).
            guidance_scale: its classifier-free guidance (0 to 30).
            seed: seed of the starting noise (0 to 2**32-1).
            scheduler: its sampler: dpm++, ddim, euler, euler-ancestral, ddpm or lcm.

        Returns:
            Per lane its output and meter: next-token words, masked-diffusion words, next-token picture,
            denoising picture; then the run's id for `replay`, `play`, `branch_text` and `branch_image`
            (empty until every lane has finished).
        """
        with user_errors():
            prompt = check_prompt(prompt)
            options = validate_render_options(steps, guidance_scale, "", seed, scheduler, record=True)
            view = {lane: None for lane in library.LANES} | {f"{lane}_meter": "" for lane in library.LANES}
            pace = Pace(*streaming_engines(self.preset), *two_by_two_engines(self.preset).values())
            finals = {}
            run_id = ""

            def outputs():
                return (*(view[key] for lane in library.LANES for key in (lane, f"{lane}_meter")), run_id)

            for lane, item in library.run_two_by_two(self.preset, prompt, options, line_updates=True):
                if not isinstance(item, InLine):
                    finals[lane] = item
                final = self._show(view, lane, item, options.steps)
                if final or isinstance(item, InLine) or pace.due():
                    yield outputs()
            recording = library.recording_of(prompt, options, finals)
            if recording is not None:
                run_id = self.runs.add(recording)
            yield outputs()

    def _show(self, view: dict, lane: str, item, total_steps: int, given=None) -> bool:
        """Put one frame into the view; True when it is a lane's last."""
        meter_key = f"{lane}_meter"
        if isinstance(item, InLine):
            view[meter_key] = item.message()
        elif isinstance(item, CaptionFrame):
            view[lane], view[meter_key] = caption_chips(item), describe_caption(item, given)
            return item.done
        elif isinstance(item, PaintFrame):
            view[lane] = item.picture or view.get(lane)
            view[meter_key] = describe_paint(item)
            return item.done
        elif isinstance(item, StepFrame):
            view[lane] = item.x0 if item.x0 is not None else view.get(lane)
            view[meter_key] = describe_denoise(item.step, item.total_steps, item.stats.unet_evaluations, item.elapsed_s,
                                           False)
        elif isinstance(item, RenderResult):
            view[lane] = item.image
            view[meter_key] = describe_denoise(item.stats.steps, total_steps, item.stats.unet_evaluations,
                                           item.stats.total_s, True)
            return True
        elif isinstance(item, RepaintFrame):
            view[lane] = item.picture
            view[meter_key] = describe_denoise(item.step, item.total_steps, item.unet_evaluations, item.seconds, item.done,
                                           "Repainted in place: outside the region nothing changes.")
            return item.done
        elif isinstance(item, library.Before):
            view[f"{lane}_before"] = item.picture
        return False

    @on_gpu(duration=60)
    def fill_blanks(self, blanks: str = EXAMPLE_BLANKS, prompt: str = ""):
        """Fill the blanks of a caption: masked diffusion fills them in place; next-token can only continue.

        Args:
            blanks: a caption with ___ for each missing word, in the storybook world's words
                (e.g. "a ___ red ___ on the left").
            prompt: a request the caption should also describe (default: none, any scene that fits the
                given words).

        Returns:
            The next-token attempt and its meter, the masked-diffusion attempt and its meter.
        """
        with user_errors():
            view = {}

            def outputs():
                return (view.get("words_next_token"), view.get("words_next_token_meter", ""),
                        view.get("words_masked_diffusion"), view.get("words_masked_diffusion_meter", ""))

            for lane, item in library.fill_blanks(self.preset, blanks, prompt or ""):
                self._show(view, lane, item, 0, given_words(blanks))
                yield outputs()  # a few dozen frames in all: each one is sent
            yield outputs()

    @on_gpu(duration=120)
    def repaint(self, prompt: str, new_prompt: str = EXAMPLE_NEW_PROMPT, region: str = "left", steps: int = 20,
                guidance_scale: float = 5.0, seed: int = 0, scheduler: str = "dpm++"):
        """Repaint one region of each worlds lane's picture: denoising changes it in place; next-token
        can only write again from the region's first token onwards.

        Args:
            prompt: the first picture's prompt (both lanes draw it first, with this seed).
            new_prompt: what the picture should show after the repaint.
            region: a place (left, right, top, bottom, center) or "x,y,width,height" in pixels of the canvas.
            steps, guidance_scale, seed, scheduler: the diffusion model's sampling, as in two_by_two.

        Returns:
            Per worlds lane: the picture before, the picture after, and the meter.
        """
        with user_errors():
            options = validate_render_options(steps, guidance_scale, "", seed, scheduler)
            view = {}
            lanes = ("worlds_next_token", "worlds_denoising")

            def outputs():
                return tuple(view.get(key) or ("" if key.endswith("meter") else None)
                             for lane in lanes for key in (f"{lane}_before", lane, f"{lane}_meter"))

            for lane, item in library.repaint(self.preset, prompt, new_prompt, region, options):
                if isinstance(item, library.Before):
                    self._show(view, lane, item, options.steps)
                    view[f"{lane}_meter"] = "the first picture is done; repainting…"
                    yield outputs()
                    continue
                self._show(view, lane, item, options.steps)
                if lane == "worlds_next_token" and isinstance(item, PaintFrame):
                    view[f"{lane}_meter"] = describe_paint(
                        item, "Kept the tokens before the region; everything after them is written again.")
                yield outputs()
            yield outputs()

    def build(self) -> None:
        recipe = self.preset.recipe
        gr.Markdown(
            "One prompt, **four lanes**: words and pictures, each made by **next-token prediction** (left to right, "
            "each piece final once written) and by **denoising** (everything at once, refined at every step).",
            elem_classes="ww-intro",
        )
        with gr.Row(equal_height=False):
            prompt = gr.Textbox(label="Prompt", value="a large red cat on the left and a small blue boat on the right, on the sea",
                                lines=2, max_lines=4, scale=4, min_width=240, elem_id="ww-four-prompt")
            with gr.Row(elem_classes="ww-run-row"):
                run = gr.Button("Run all four", variant="primary", elem_id="ww-run-four", scale=3, min_width=100)
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=60)
        with gr.Row(equal_height=False, elem_classes="ww-lanes"):
            with gr.Column(min_width=150):
                gr.Markdown("**Next-token** <span class='ww-more'>· left to right, each piece final</span>",
                            elem_classes="ww-caption")
                words_nt = gr.HighlightedText(label="Words, next-token", show_label=False, show_legend=False, combine_adjacent=False,
                                              elem_id="ww-lane-words-next-token", elem_classes="ww-words")
                words_nt_meter = gr.Markdown(label="Compute meter (words, next-token)", elem_classes="ww-meter", elem_id="ww-meter-words-next-token")
            with gr.Column(min_width=150):
                gr.Markdown("**Denoising** <span class='ww-more'>· everything, refined at every step</span>",
                            elem_classes="ww-caption")
                words_md = gr.HighlightedText(label="Words, masked diffusion", show_label=False, show_legend=False, combine_adjacent=False,
                                              elem_id="ww-lane-words-masked-diffusion", elem_classes="ww-words")
                words_md_meter = gr.Markdown(label="Compute meter (words, masked diffusion)", elem_classes="ww-meter", elem_id="ww-meter-words-masked-diffusion")
        with gr.Row(equal_height=False, elem_classes="ww-lanes ww-images"):
            with gr.Column(min_width=120):
                worlds_nt = gr.Image(label="Picture, next-token", show_label=False, type="pil", height=170, buttons=[],
                                     elem_classes="ww-pixels", elem_id="ww-lane-worlds-next-token")
                worlds_nt_meter = gr.Markdown(label="Compute meter (picture, next-token)", elem_classes="ww-meter", elem_id="ww-meter-worlds-next-token")
            with gr.Column(min_width=120):
                worlds_dn = gr.Image(label="Picture, denoising", show_label=False, type="pil", height=170,
                                     buttons=[], elem_classes="ww-pixels", elem_id="ww-lane-worlds-denoising")
                worlds_dn_meter = gr.Markdown(label="Compute meter (picture, denoising)", elem_classes="ww-meter", elem_id="ww-meter-worlds-denoising")
        run_id = gr.Textbox(label="Run id", visible=False, elem_id="ww-run-id")
        gr.Markdown("<small>A controlled comparison: the two words lanes are one small BERT (0.8M parameters) trained on "
                    "the same batches with the same tokenizer, causal attention and next-word loss on the left, full "
                    "attention and unmasking loss on the right. The two picture lanes decode with the same VAE. "
                    f"{library.picture_lanes_measured(self.preset)}</small>",
                    elem_classes="ww-caption")
        Replay(self.preset, self.runs).build(run_id)
        with gr.Accordion("What only one process can do", open=False, elem_id="ww-only-one"):
            gr.Markdown("**Fill in the blanks** (words): each `___` is one word. Masked diffusion fills them where "
                        "they are; a left-to-right model can only continue from the words before the first blank.")
            with gr.Row(equal_height=False):
                blanks = gr.Textbox(label="Caption with blanks", value=EXAMPLE_BLANKS, scale=3, min_width=200)
                fill_request = gr.Textbox(label="Request it should also describe (optional)", value="", scale=2,
                                          min_width=160)
                fill = gr.Button("Fill the blanks", scale=1, min_width=120)
            gr.Markdown("**Repaint a region** (worlds): both lanes first draw the prompt above, then change one "
                        "region to follow the new prompt. Denoising repaints it in place; a next-token painter can "
                        "only keep the tokens before the region and write everything after them again.")
            with gr.Row(equal_height=False):
                new_prompt = gr.Textbox(label="New prompt", value=EXAMPLE_NEW_PROMPT, scale=3, min_width=200)
                region = gr.Dropdown(list(PLACES), value="left", label="Region", allow_custom_value=True, scale=1,
                                     min_width=100, info="a place, or x,y,width,height")
                repaint = gr.Button("Repaint", scale=1, min_width=100)
            with gr.Row(equal_height=False):
                for process in ("Next-token", "Denoising"):
                    with gr.Column(min_width=260):
                        gr.Markdown(f"**{process}**: before → after", elem_classes="ww-caption")
                        with gr.Row(equal_height=False, elem_classes="ww-images"):
                            before = gr.Image(label=f"{process}, before", show_label=False, type="pil", height=120,
                                              buttons=[], elem_classes="ww-pixels")
                            after = gr.Image(label=f"{process}, after", show_label=False, type="pil", height=120,
                                             buttons=[], elem_classes="ww-pixels")
                        repaint_meter = gr.Markdown(label=f"Compute meter (repaint, {process.lower()})",
                                                    elem_classes="ww-meter")
                    if process == "Next-token":
                        nt_before, nt_after, nt_repaint_meter = before, after, repaint_meter
                    else:
                        dn_before, dn_after, dn_repaint_meter = before, after, repaint_meter
        with gr.Accordion("Sampling (denoising picture)", open=False):
            steps = gr.Slider(1, MAX_STEPS, value=recipe.steps, step=1, label="Steps")
            guidance_scale = gr.Slider(0, 15, value=recipe.guidance_scale, step=0.5, label="Guidance scale")
            scheduler = gr.Dropdown(list(SCHEDULERS), value=recipe.scheduler, label="Scheduler")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")

        limit = None if self.preset.batched else 2
        events = [
            run.click(self.two_by_two, [prompt, steps, guidance_scale, seed, scheduler],
                      [words_nt, words_nt_meter, words_md, words_md_meter, worlds_nt, worlds_nt_meter, worlds_dn,
                       worlds_dn_meter, run_id], concurrency_limit=limit),
            fill.click(self.fill_blanks, [blanks, fill_request], [words_nt, words_nt_meter, words_md, words_md_meter],
                       concurrency_limit=limit),
            # One repaint at a time per pair of cores: it runs the inpainting pipeline outside the batch.
            repaint.click(self.repaint, [prompt, new_prompt, region, steps, guidance_scale, seed, scheduler],
                          [nt_before, nt_after, nt_repaint_meter, dn_before, dn_after, dn_repaint_meter],
                          concurrency_limit=1),
        ]
        stop.click(None, cancels=events)
        fill.click(None, js=scroll_into_view("ww-lane-words-next-token"))  # the attempts show in the words lanes
