"""The two-by-two: one prompt, four lanes, two processes (next-token, denoising) x two media (words, worlds).

|        | next-token                             | denoising                                  |
|--------|----------------------------------------|--------------------------------------------|
| words  | `words_next_token`: a causal BERT      | `words_masked_diffusion`: the same BERT    |
|        | writes the caption left to right       | with full attention unmasks every position |
| worlds | `worlds_next_token`: a GPT-2 writes    | `worlds_denoising`: the preset's diffusion |
|        | the picture's 64 image tokens (GPU     | model (offline: the miniature SD)          |
|        | presets: Janus-Pro writes 576)         |                                            |

Each lane streams its own process; `merge_streams` yields (lane, frame) as frames happen.
Two one-click demonstrations show what only one process can do: `fill_blanks` (words:
masked diffusion fills blanks in place, next-token can only continue from the words before
the first blank) and `repaint` (worlds: denoising repaints a region in place, next-token
can only continue from the tokens before it).

    >>> from wordsworlds.two_by_two import run_two_by_two
    >>> for lane, frame in run_two_by_two(preset, "a large red cat on the left", options):  # doctest: +SKIP
    ...     print(lane, frame)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from .compare import merge_streams
from .engines import load_painter, streaming_engines, two_by_two_engines
from .errors import MAX_PROMPT_CHARS, InputError, check_number, check_prompt, check_text
from .models import load_diffusion
from .presets import Preset
from .replay import Recording
from .words.captions import END, CaptionFrame, Captioner
from .world.draw import IMAGE_SIZE
from .world.train import SUMMARY_FILE
from .worlds.diffusion import RenderOptions, RenderResult, validate_branch
from .worlds.painter import PaintFrame
from .worlds.repaint import parse_region, repaint_stream

LANES = ("words_next_token", "words_masked_diffusion", "worlds_next_token", "worlds_denoising")


@dataclass
class Before:
    """The picture a repaint starts from (the lane's own, painted or rendered from the first prompt)."""

    picture: Image.Image


def picture_lanes_measured(preset: Preset) -> str:
    """What the two picture lanes' own evaluations measured (the training summaries in their folders), so a
    room does not read an under-trained painter's misses as its process's; "" where a lane has none (Hub models)."""
    try:
        painter, diffusion = (json.loads(Path(folder, SUMMARY_FILE).read_text())
                              for folder in (preset.painter, preset.diffusion))
        painted, rendered = (s["evaluation"]["in_distribution"]["overall"] for s in (painter, diffusion))
        painter_steps, unet_steps = painter["train_config"]["steps"], diffusion["unet_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return (f"Measured on this world: the painter draws {painted:.0%} of scenes exactly, denoising {rendered:.0%}. "
            f"The painter trained {painter_steps:,} steps, the U-Net {unet_steps:,}: the gap measures their "
            "training as much as their processes.")


def _check_lengths(preset: Preset, *prompts: str) -> None:
    """Every lane's own limit on the prompt, checked before any lane starts."""
    for prompt in prompts:
        if prompt:
            Captioner.load(preset, "next_token").encode_prompt(prompt)
            load_painter(preset).encode_prompt(prompt)


def run_two_by_two(preset: Preset, prompt: str, render_options: RenderOptions, should_stop=None,
                   line_updates: bool = False) -> Iterator[tuple[str, object]]:
    """All four lanes on one prompt. The painter and the diffusion model take the same seed
    (`render_options.seed`); the painter is greedy, so its seed matters only when it samples.
    With `render_options.record`, the diffusion model keeps every step (a `Recording` can replay the run)."""
    prompt = check_prompt(prompt)
    _check_lengths(preset, prompt)
    lanes = two_by_two_engines(preset)
    _, worlds = streaming_engines(preset)
    live = {"line_updates": line_updates, "skip_stale": line_updates}
    yield from merge_streams({
        "words_next_token": lambda stopped: lanes["words_next_token"].stream(prompt=prompt, should_stop=stopped,
                                                                             **live),
        "words_masked_diffusion": lambda stopped: lanes["words_masked_diffusion"].stream(
            prompt=prompt, should_stop=stopped, **live),
        "worlds_next_token": lambda stopped: lanes["worlds_next_token"].stream(
            prompt=prompt, seed=render_options.seed, should_stop=stopped, **live),
        "worlds_denoising": lambda stopped: worlds.stream(prompt, render_options, should_stop=stopped, **live),
    }, should_stop)


def recording_of(prompt: str, render_options: RenderOptions, finals: dict[str, object]) -> Recording | None:
    """The run as a Recording, from each lane's last item; None if a lane did not finish (stopped)."""
    captions = {lane.removeprefix("words_"): finals.get(lane) for lane in ("words_next_token", "words_masked_diffusion")}
    painted, rendered = finals.get("worlds_next_token"), finals.get("worlds_denoising")
    if not (all(isinstance(f, CaptionFrame) and f.done for f in captions.values())
            and isinstance(painted, PaintFrame) and painted.done
            and isinstance(rendered, RenderResult) and rendered.trace is not None
            and rendered.stats.stopped_by == "done"):
        return None
    return Recording(prompt, render_options, captions, list(painted.codes), rendered)


def caption_words(frame: CaptionFrame) -> list[str]:
    """The caption's words, up to its end."""
    words = []
    for word in frame.words:
        if word is None or word == END:
            break
        words.append(word)
    return words


def branch_text(preset: Preset, prompt: str, caption: list[str], position, word: str,
                should_stop=None) -> Iterator[CaptionFrame]:
    """Rewind the next-token caption `caption` (written for `prompt`) to word `position` (0-based), write `word`
    there instead, and let the model continue from it. Checked before any model work."""
    if not caption:
        raise InputError("the caption is empty: there is no word to branch from")
    position = check_number("position", position, int, 0, len(caption) - 1)
    if not isinstance(word, str) or not word.strip() or len(word.split()) != 1 or word.strip() == END:
        raise InputError("word must be one word of the storybook world (e.g. green, boat, top)")
    writer = Captioner.load(preset, "next_token")
    template = " ".join([*caption[:position], word.strip().lower(), "___"])
    writer.parse_blanks(template)  # an unknown word, or a caption too long, refused here
    engine = two_by_two_engines(preset)["words_next_token"]
    yield from engine.stream(prompt=prompt, blanks=template, should_stop=should_stop or (lambda: False))


def branch_image(preset: Preset, prompt: str, render_options: RenderOptions, at_step, new_prompt: str = "",
                 new_seed=None, should_stop=None) -> Iterator:
    """The render of `prompt` with `render_options`, rewound to step `at_step` and continued from that latent
    with `new_prompt` or `new_seed`: the first `at_step` steps are the original's (the seeded run repeats
    them exactly), the rest follow the change. Checked before any model work."""
    prompt = check_prompt(prompt)
    branch = validate_branch(render_options, at_step, new_prompt, new_seed, prompt)
    _, worlds = streaming_engines(preset)
    yield from worlds.stream(prompt, replace(render_options, record=False, branch=branch), should_stop=should_stop)


def fill_blanks(preset: Preset, blanks: str, prompt: str = "", should_stop=None) -> Iterator[tuple[str, object]]:
    """Both words lanes on a caption with blanks (`___`, one word each). With no `prompt` (the default) the
    models fill the blanks with any scene that fits the given words. With one, they were trained to write
    its whole scene in a fixed order: a template that disagrees with that caption is outside what they
    learnt (the masked model then fills by position)."""
    if prompt:
        prompt = check_prompt(prompt)
        _check_lengths(preset, prompt)
    if isinstance(blanks, str) and len(blanks) > MAX_PROMPT_CHARS:  # refused before loading the model that parses it
        check_text(blanks, "blanks")
    Captioner.load(preset, "masked_diffusion").parse_blanks(blanks)  # refused before either lane starts
    lanes = two_by_two_engines(preset)
    yield from merge_streams({
        lane: lambda stopped, lane=lane: lanes[lane].stream(prompt=prompt, blanks=blanks, should_stop=stopped)
        for lane in ("words_next_token", "words_masked_diffusion")
    }, should_stop)


def repaint(preset: Preset, prompt: str, new_prompt: str, region: str, render_options: RenderOptions,
            should_stop=None) -> Iterator[tuple[str, object]]:
    """Both worlds lanes: each first makes its picture of `prompt` (a `Before` item), then changes `region`
    to follow `new_prompt`: denoising in place, next-token by writing again from the region's first token."""
    prompt, new_prompt = check_prompt(prompt), check_prompt(new_prompt)
    parse_region(region, IMAGE_SIZE)  # the painter's canvas; refused here, before any model loads
    _check_lengths(preset, prompt, new_prompt)
    diffusion = load_diffusion(preset).pipe
    if type(diffusion).__name__ != "StableDiffusionPipeline":
        raise InputError(f"repainting runs on Stable Diffusion 1.x/2.x pipelines; the preset {preset.name!r} "
                         f"has a {type(diffusion).__name__}")
    painter = load_painter(preset)
    painter_region = parse_region(region, painter.picture_size)
    first = min(painter_region.cells(painter.grid, painter.picture_size))
    lanes = two_by_two_engines(preset)
    _, worlds = streaming_engines(preset)

    def painted(stopped):
        *_, original = lanes["worlds_next_token"].stream(prompt=prompt, seed=render_options.seed, should_stop=stopped)
        yield Before(original.picture)
        yield from lanes["worlds_next_token"].stream(prompt=new_prompt, seed=render_options.seed,
                                                     prefix=original.codes[:first], should_stop=stopped)

    def denoised(stopped):
        result = None
        for item in worlds.stream(prompt, replace(render_options, previews=False), should_stop=stopped):
            result = item
        if not isinstance(result, RenderResult):
            return
        yield Before(result.image)
        box = parse_region(region, result.image.width)
        yield from repaint_stream(diffusion, result.image, new_prompt, box, render_options.steps,
                                  render_options.guidance_scale, render_options.seed, should_stop=stopped)

    yield from merge_streams({"worlds_next_token": painted, "worlds_denoising": denoised}, should_stop)
