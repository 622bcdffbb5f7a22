"""The two-by-two: the caption writers, the painter, fill-in-the-blanks and repaint, on the shipped models."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from wordsworlds.errors import InputError
from wordsworlds.presets import get_preset
from wordsworlds.words.captions import Captioner
from wordsworlds.worlds.painter import Painter
from wordsworlds.two_by_two import Before, fill_blanks, picture_lanes_measured, repaint, run_two_by_two
from wordsworlds.world.scene import parse_caption
from wordsworlds.world.train_captions import write_captions
from wordsworlds.world.train_painter import paint
from wordsworlds.worlds.diffusion import validate_render_options
from wordsworlds.worlds.repaint import parse_region

from conftest import TINY, run_cli


def in_this_process(preset):
    """The engines in this process (the tests' own), not in an engine process."""
    return replace(preset, accel=replace(preset.accel, engine_process=False))


def alone(preset):
    """The engines in this process, each request alone (no step loop)."""
    return replace(preset, accel=replace(preset.accel, engine_process=False, batching=False))

REQUESTS = ["a large red cat on the left and a small blue boat on the right, on the sea",
            "draw a big yellow sun at the top, at sunset",
            "show me a tiny green car below, a big purple kitten in the middle"]


@pytest.fixture(scope="module")
def writers():
    return {p: Captioner.load(alone(TINY), p) for p in ("next_token", "masked_diffusion")}


@pytest.fixture(scope="module")
def painter():
    return Painter.load(alone(TINY))


def test_the_two_caption_writers_are_the_same_size_and_tokenizer(writers):
    counts = {p: sum(x.numel() for x in w.model.parameters()) for p, w in writers.items()}
    assert counts["next_token"] == counts["masked_diffusion"]
    assert writers["next_token"].tokenizer.get_vocab() == writers["masked_diffusion"].tokenizer.get_vocab()
    assert writers["next_token"].model.config.is_decoder and not writers["masked_diffusion"].model.config.is_decoder


@pytest.mark.parametrize("process", ["next_token", "masked_diffusion"])
def test_the_streaming_writer_writes_what_the_libraries_own_generation_writes(writers, process):
    """Next-token against transformers' generate; masked diffusion against diffusers' LLaDA2Pipeline."""
    writer = writers[process]
    expected, _ = write_captions(process, writer.model, writer.tokenizer, REQUESTS, writer.prompt_length,
                                 writer.gen_length, steps=12)
    ours = [writer.write(r).caption for r in REQUESTS]
    assert ours == [e.strip() for e in expected]


@pytest.mark.parametrize("process", ["next_token", "masked_diffusion"])
def test_both_writers_caption_the_scene_asked_for(writers, process):
    for request in REQUESTS:
        frame = writers[process].write(request)
        assert frame.done
        assert parse_caption(frame.caption) == parse_caption(request.removeprefix("draw ").removeprefix("show me ")), \
            (process, request, frame.caption)


def test_next_token_commits_one_word_per_pass_and_masked_diffusion_several(writers):
    frames = list(writers["next_token"].stream(REQUESTS[0]))
    assert all(len(f.committed) == 1 for f in frames) and frames[-1].step == len(frames)
    # Written words never change afterwards.
    for earlier, later in zip(frames, frames[1:]):
        assert all(w is None or w == v for w, v in zip(earlier.words, later.words))
    writer = writers["masked_diffusion"]
    frames = list(writer.stream(REQUESTS[0], num_inference_steps=6))
    # Every caption position over 6 passes, as evenly as the schedule splits them.
    assert len(frames) == 6 and sum(len(f.committed) for f in frames) == writer.gen_length
    assert all(writer.gen_length // 6 <= len(f.committed) <= -(-writer.gen_length // 6) for f in frames)
    assert frames[0].words.count(None) == writer.gen_length - len(frames[0].committed)
    assert frames[-1].words.count(None) == 0


def test_masked_diffusion_fills_blanks_in_place_and_next_token_only_continues(writers):
    blanks = "a ___ red ___ on the left"
    filled = writers["masked_diffusion"].write("", blanks=blanks)
    words = filled.caption.split()
    assert len(words) == 7 and [words[i] for i in (0, 2, 4, 5, 6)] == ["a", "red", "on", "the", "left"]
    assert parse_caption(filled.caption) is not None and filled.step <= 2
    continued = writers["next_token"].write("", blanks=blanks)
    assert continued.words[0] == "a" and continued.fixed[0] and not continued.fixed[1]


@pytest.mark.parametrize("blanks, message", [
    ("", "blanks is empty"),
    ("a red cat on the left", "no blank to fill"),
    ("a _x_ red", "is not a blank"),
    ("a ___ red ___ on the ceiling", "do not know 'ceiling'"),
    ("___ " * 40, "a caption holds at most"),
])
def test_malformed_blanks_are_refused_before_any_model_work(writers, blanks, message):
    with pytest.raises(InputError, match=message):
        next(writers["masked_diffusion"].stream("", blanks=blanks))


def test_huge_blanks_are_refused_before_the_caption_model_loads(monkeypatch):
    from conftest import TINY

    def no_loading(*args, **kwargs):
        raise AssertionError("a caption model loaded for hostile input")

    monkeypatch.setattr(Captioner, "load", no_loading)
    with pytest.raises(InputError, match="100,000 characters"):
        next(fill_blanks(TINY, "___ " + "x" * 99_996))


def test_a_prompt_too_long_for_the_caption_models_is_refused(writers):
    with pytest.raises(InputError, match="read at most"):
        next(writers["next_token"].stream("red " * 60))


def test_the_painter_streams_what_generate_paints(painter):
    prompt = "a large red cat on the left and a small blue boat on the right, on the sea"
    frames = list(painter.stream(prompt))
    assert len(frames) == painter.length and frames[-1].done
    assert sum(f.picture is not None for f in frames) == painter.image_tokenizer.grid  # one canvas per row
    ids_picture = paint(painter.model, painter.tokenizer, painter.image_tokenizer, painter.vae, [prompt],
                        painter.prompt_length, painter.code_offset)[0]
    assert np.abs(np.asarray(ids_picture, dtype=int) - np.asarray(frames[-1].picture, dtype=int)).max() <= 1
    continued = list(painter.stream("a large yellow sun on the left", prefix=frames[-1].codes[:16]))
    assert len(continued) == painter.length - 16 and continued[-1].codes[:16] == frames[-1].codes[:16]


def test_repaint_changes_the_region_in_place_for_denoising_only(tiny):
    options = validate_render_options(steps=8, guidance_scale=5.0, seed=0)
    items = list(repaint(in_this_process(tiny), "a large red cat on the left and a small blue boat on the right, on the sea",
        "a large yellow sun on the left and a small blue boat on the right, on the sea", "left", options))
    before = {lane: item.picture for lane, item in items if isinstance(item, Before)}
    after = {lane: item for lane, item in items if not isinstance(item, Before)}
    assert set(before) == {"worlds_next_token", "worlds_denoising"}
    region = parse_region("left", 64)
    outside = np.asarray(region.mask(64)) == 0
    old, new = np.asarray(before["worlds_denoising"]), np.asarray(after["worlds_denoising"].picture)
    assert (old[outside] == new[outside]).all()  # not one pixel outside the region changes
    assert np.abs(old[~outside].astype(int) - new[~outside]).mean() > 10  # inside, a new object


@pytest.mark.parametrize("region, message", [
    ("nowhere", "neither a place"), ("60,60,10,10", "outside the 64x64 canvas"), ("0,0,0,4", "above 0"),
    ("0,0,64,64", "whole canvas"), ("", "region must be"),
])
def test_a_bad_region_is_refused(region, message):
    with pytest.raises(InputError, match=message):
        parse_region(region, 64)


def test_all_four_lanes_stream_and_finish(tiny):
    options = validate_render_options(steps=6, guidance_scale=5.0, seed=0)
    seen = {}
    for lane, item in run_two_by_two(in_this_process(tiny), REQUESTS[0], options):
        seen.setdefault(lane, []).append(item)
    assert set(seen) == {"words_next_token", "words_masked_diffusion", "worlds_next_token", "worlds_denoising"}
    assert seen["words_next_token"][-1].done and seen["words_masked_diffusion"][-1].done
    assert seen["worlds_next_token"][-1].done
    assert type(seen["worlds_denoising"][-1]).__name__ == "RenderResult"


def test_cli_fill_blanks_and_bad_region(capsys):
    code, out, _ = run_cli(capsys, "fill-blanks", "a ___ red ___ on the left", "--json")
    assert code == 0 and '"words_masked_diffusion"' in out
    code, _, err = run_cli(capsys, "repaint", "a red cat on the left", "a blue boat on the left",
                           "--region", "0,0,99,4")
    assert code == 2 and "outside the 64x64 canvas" in err


def test_training_smoke_runs_save_loadable_folders(tmp_path):
    from wordsworlds.world.train_captions import CaptionTrainConfig, train_captions

    train_captions(CaptionTrainConfig.toy(), out=tmp_path / "captions", run_dir=tmp_path / "run")
    for process in ("next_token", "masked_diffusion"):
        frame = Captioner.from_pretrained(tmp_path / "captions", process).write("a red cat")
        assert frame.done


def test_painter_training_smoke_run_saves_a_loadable_folder(tmp_path):
    from diffusers import AutoencoderKL

    from wordsworlds.presets import STORYBOOK_WORLD
    from wordsworlds.world.train_painter import PainterTrainConfig, train_painter

    summary = train_painter(PainterTrainConfig.toy(), out=tmp_path / "painter", run_dir=tmp_path / "run")
    assert summary["evaluation"]["in_distribution"]["prompts"] == 2
    painter = Painter.from_pretrained(tmp_path / "painter", AutoencoderKL.from_pretrained(STORYBOOK_WORLD, subfolder="vae"))
    assert list(painter.stream("a red cat"))[-1].done


def test_batched_runs_write_what_each_writes_alone(writers, painter):
    """The small engines' step loop (serving.RunLoop): a request's result does not depend on who else is in the batch."""
    import threading

    alone_md = {r: writers["masked_diffusion"].write(r).caption for r in REQUESTS}
    alone_paint = {r: list(painter.stream(r))[-1].codes for r in REQUESTS}
    alone = writers["masked_diffusion"]
    md = Captioner(alone.model, alone.tokenizer, "masked_diffusion", alone.prompt_length, alone.gen_length,
                   batching=True)
    paint_loop = Painter(painter.model, painter.tokenizer, painter.image_tokenizer, painter.vae, painter.prompt_length,
                         painter.code_offset, batching=True)
    together, results = threading.Barrier(len(REQUESTS) * 2), {}

    def caption(request):
        together.wait()
        *_, last = md.stream(request)
        results[("md", request)] = last.caption

    def picture(request):
        together.wait()
        *_, last = paint_loop.stream(request)
        results[("paint", request)] = last.codes

    threads = [threading.Thread(target=f, args=(r,)) for r in REQUESTS for f in (caption, picture)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert md.loop.largest_batch > 1 and paint_loop.loop.largest_batch > 1
    assert {r: results[("md", r)] for r in REQUESTS} == alone_md
    assert {r: results[("paint", r)] for r in REQUESTS} == alone_paint


def test_the_picture_lanes_say_what_their_own_evaluations_measured(tmp_path):
    painter, diffusion = tmp_path / "painter", tmp_path / "diffusion"
    painter.mkdir(), diffusion.mkdir()
    (painter / "training_summary.json").write_text(json.dumps(
        {"train_config": {"steps": 1234}, "evaluation": {"in_distribution": {"overall": 0.07}}}))
    (diffusion / "training_summary.json").write_text(json.dumps(
        {"unet_step": 4321, "evaluation": {"in_distribution": {"overall": 0.555}}}))
    preset = get_preset("tiny", painter=str(painter), diffusion=str(diffusion))
    said = picture_lanes_measured(preset)
    assert "the painter draws 7% of scenes exactly, denoising 56%" in said
    assert "1,234 steps, the U-Net 4,321" in said
    # A lane without a summary (a Hub model) or with a malformed one: nothing said.
    assert picture_lanes_measured(get_preset("tiny", painter=str(tmp_path / "none"))) == ""
    (painter / "training_summary.json").write_text("{not json")
    assert picture_lanes_measured(preset) == ""
