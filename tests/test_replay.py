"""At the speaker's pace: recorded renders, cross-attention maps, branches, the run store and its replays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from wordsworlds.errors import InputError
from wordsworlds.replay import NEW, RunStore, words_at
from wordsworlds.words.captions import END
from wordsworlds.two_by_two import branch_image, branch_text, caption_words, recording_of, run_two_by_two
from wordsworlds.worlds.diffusion import ImageGenerator, decode_latents, validate_branch, validate_render_options
from wordsworlds.worlds.painter import Painter

from conftest import TINY, run_cli
from test_two_by_two import alone, in_this_process

PROMPT = "a large red cat on the left and a small blue boat on the right, on the sea"
YELLOW = "a large yellow sun on the left and a small blue boat on the right, on the sea"


@pytest.fixture(scope="module", params=["alone", "batched"])
def generator(request):
    preset = alone(TINY) if request.param == "alone" else in_this_process(TINY)
    return ImageGenerator.load(preset)


@pytest.fixture(scope="module")
def recording():
    preset = in_this_process(TINY)
    options = validate_render_options(record=True)
    finals = {}
    for lane, item in run_two_by_two(preset, PROMPT, options):
        finals[lane] = item
    return recording_of(PROMPT, options, finals)


def test_recording_changes_nothing_and_keeps_every_step(generator):
    options = validate_render_options(steps=12)
    plain = generator.render(PROMPT, options=options)
    recorded = generator.render(PROMPT, options=replace(options, record=True))
    assert np.array_equal(np.asarray(plain.image), np.asarray(recorded.image))
    trace = recorded.trace
    assert len(trace.noisy) == len(trace.x0) == len(trace.attention) == 12
    assert trace.tokens[:4] == ["a", "large", "red", "cat"]
    assert trace.attention[0].shape == (len(trace.tokens), 16, 16)  # the latent grid
    assert plain.trace is None


def test_the_attention_of_red_falls_on_the_red_cat_and_of_blue_on_the_blue_boat(generator):
    """The picture has the red cat on the left, the blue boat on the right (the checker's own test). On these
    weights the colour words point at their things; the nouns' maps are darkest on both things (measured: "cat"
    1.03x, "boat" 1.23x), so only the colours are asserted."""
    from wordsworlds.world.scene import parse_caption
    from wordsworlds.worlds.layout import region_masks

    trace = generator.render(PROMPT, options=validate_render_options(record=True)).trace
    masks = region_masks(parse_caption(PROMPT), trace.attention[0].shape[-1])[:, 0].numpy()  # background, cat, boat
    for word, own, other in (("red", 1, 2), ("blue", 2, 1)):
        maps = np.stack([m[trace.tokens.index(word)].astype(np.float32) for m in trace.attention[5:]]).mean(0)
        maps = maps - maps.min()  # above its floor: where the word acts more than anywhere else
        mean_own, mean_other = ((maps * masks[k]).sum() / masks[k].sum() for k in (own, other))
        assert mean_own > 1.3 * mean_other, (word, mean_own, mean_other)


def test_a_branch_repeats_the_original_steps_then_follows_its_prompt(generator):
    from wordsworlds.hybrid.describe import describe

    options = validate_render_options(record=True)
    original = generator.render(PROMPT, options=options)
    branch = validate_branch(options, 8, YELLOW, None, PROMPT)
    branched = generator.render(PROMPT, options=replace(options, branch=branch))
    for step in range(9):  # the latent after 8 steps is the original's, exactly
        assert np.array_equal(original.trace.noisy[step], branched.trace.noisy[step]), step
    assert not np.array_equal(original.trace.noisy[9], branched.trace.noisy[9])
    assert "yellow sun" in describe(TINY, branched.image)[1]  # the recognizer reads the branch back
    # A seed branch with a sampler that draws noise at every step changes the picture; the same seed does not.
    ancestral = validate_render_options(scheduler="euler-ancestral", record=True)
    same = generator.render(PROMPT, options=ancestral)
    other = generator.render(PROMPT, options=replace(ancestral, branch=validate_branch(ancestral, 5, "", 7, PROMPT)))
    assert np.array_equal(same.trace.noisy[5], other.trace.noisy[5])
    assert not np.array_equal(np.asarray(same.image), np.asarray(other.image))


@pytest.mark.parametrize("at_step, prompt, seed, scheduler, message", [
    (0, YELLOW, None, "dpm++", "at_step must be"),
    (20, YELLOW, None, "dpm++", "at_step must be"),
    (float("nan"), YELLOW, None, "dpm++", "finite"),
    (8, "", None, "dpm++", "changes nothing"),
    (8, PROMPT, 0, "dpm++", "changes nothing"),
    (8, "", 7, "dpm++", "would change nothing"),
    (8, "x\x00y", None, "dpm++", "control"),
    (8, "", -1, "ddpm", "seed"),
])
def test_a_bad_branch_is_refused_before_any_model_work(at_step, prompt, seed, scheduler, message):
    options = validate_render_options(scheduler=scheduler)
    with pytest.raises(InputError, match=message):
        validate_branch(options, at_step, prompt, seed, PROMPT)


def test_a_replay_shows_every_lane_at_one_step_with_what_changed(recording):
    from wordsworlds.world.train_captions import UNMASK_STEPS

    caption_words = len(recording.captions["next_token"].caption.replace(",", " ,").split())
    assert recording.lengths == {"words_next_token": caption_words + 1, "words_masked_diffusion": UNMASK_STEPS,
                                 "worlds_next_token": 64, "worlds_denoising": 20}
    preset = in_this_process(TINY)
    vae = ImageGenerator.load(preset).pipe.vae
    decode = lambda latents: decode_latents(vae, latents)  # noqa: E731
    canvases = Painter.load(preset).canvases
    view = recording.view_at(5, decode, canvases, "red")
    assert [w for w, _ in view.words_next_token] == ["a", "large", "red", "cat", "on"]
    assert view.words_next_token[-1][1] == NEW and all(c is None for _, c in view.words_next_token[:-1])
    # A masked-diffusion pass may settle only where the caption ends (no word to mark): the first pass from 5
    # on that commits a word marks it.
    masked = recording.captions["masked_diffusion"]
    step = min(made for word, made in zip(masked.words, masked.passes) if made is not None and made >= 5 and word != END)
    assert sum(c == NEW for _, c in recording.view_at(step, decode, canvases).words_masked_diffusion) >= 1
    assert view.lane_steps == dict.fromkeys(recording.lengths, 5)
    # x_t in pixels clears as the steps go: step 1 is far from the final picture, the last step close to it.
    final = np.asarray(recording.render.image, np.float32)
    first = np.asarray(recording.view_at(1, decode, canvases).noisy, np.float32)
    last = np.asarray(recording.view_at(20, decode, canvases).noisy, np.float32)
    assert np.abs(last - final).mean() < 0.5 * np.abs(first - final).mean()
    # Before the first step: the starting noise in pixels, beside an empty (grey) guess.
    start = recording.view_at(0, decode, canvases)
    assert np.asarray(start.noisy).std() > 10 and np.asarray(start.worlds_denoising).std() == 0
    # Past a lane's end, it stays at its end.
    assert recording.view_at(40, decode, canvases).lane_steps["worlds_denoising"] == 20
    for step, token, message in ((65, None, "step must be"), (-1, None, "step must be"), (5, 99, "token must be"),
                                 (5, "dog", "not in the prompt"), (float("inf"), None, "finite")):
        with pytest.raises(InputError, match=message):
            recording.view_at(step, decode, canvases, token)


def test_words_at_shows_masked_positions_and_what_each_pass_committed(recording):
    masked = recording.captions["masked_diffusion"]
    start = words_at(masked, 0)
    assert start and all(w == "▢" for w, _ in start)
    assert [w for w, _ in words_at(masked, masked.step)] == caption_words(masked)
    assert words_at(recording.captions["next_token"], 0) == []


def test_branch_text_keeps_the_words_before_and_continues_from_the_new_one(recording):
    preset = alone(TINY)
    words = caption_words(recording.captions["next_token"])
    *_, frame = branch_text(preset, PROMPT, words, 2, "green")
    assert caption_words(frame)[:3] == ["a", "large", "green"]
    for position, word, message in ((len(words), "green", "position must be"), (-1, "green", "position must be"),
                                    (2, "banana", "do not know"), (2, "two words", "one word"), (2, 7, "one word")):
        with pytest.raises(InputError, match=message):
            next(branch_text(preset, PROMPT, words, position, word))


def test_the_run_store_forgets_the_oldest_run_and_says_so(recording):
    store = RunStore(max_runs=2)
    ids = [store.add(recording) for _ in range(3)]
    assert len(store) == 2 and store.get(ids[2]) is recording
    with pytest.raises(InputError, match="no longer kept"):
        store.get(ids[0])
    for bad in ("", None, 5, "../../etc/passwd"):
        with pytest.raises(InputError):
            store.get(bad)
    small = RunStore(max_bytes=1)
    first = small.add(recording)
    second = small.add(recording)
    assert len(small) == 1 and small.get(second) is recording
    with pytest.raises(InputError):
        small.get(first)


def test_branch_image_through_the_library_refuses_before_rendering(recording):
    with pytest.raises(InputError, match="at_step"):
        next(branch_image(alone(TINY), PROMPT, recording.options, 99, YELLOW))


def test_cli_renders_a_branch_and_refuses_a_bad_one(capsys, tmp_path):
    code, out, err = run_cli(capsys, "render", PROMPT, "--branch-at", "8", "--branch-prompt", YELLOW,
                             "--out", str(tmp_path / "branch.png"))
    assert code == 0, err
    assert (tmp_path / "branch.png").exists()
    code, out, err = run_cli(capsys, "render", PROMPT, "--branch-at", "30", "--branch-prompt", YELLOW)
    assert code == 2 and "at_step must be" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "caption", PROMPT, "--branch-at", "2", "--branch-word", "green")
    assert code == 0, err
    assert out.split()[:3] == ["a", "large", "green"]
    code, out, err = run_cli(capsys, "caption", PROMPT, "--branch-at", "40", "--branch-word", "green")
    assert code == 2 and "position must be" in err
