"""The shapes world: scenes, captions, the checker, the recognizer, and a training smoke run."""

from __future__ import annotations

import random

import pytest

from wordsworlds.world.checker import check
from wordsworlds.world.draw import draw_scene
from wordsworlds.world.scene import (
    COLOURS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, Scene, SceneError, WorldObject, caption, parse_caption,
    random_scene,
)


def test_the_world_has_the_promised_variety():
    assert len(SHAPES) >= 3 and len(COLOURS) >= 6 and len(SIZES) >= 2 and len(POSITIONS) >= 5


def test_scenes_are_deterministic_from_a_seed():
    a = [random_scene(random.Random(7)) for _ in range(3)]
    b = [random_scene(random.Random(7)) for _ in range(3)]
    assert a == b
    assert draw_scene(a[0]).tobytes() == draw_scene(b[0]).tobytes()


def test_every_varied_caption_parses_back_to_its_scene():
    rng = random.Random(0)
    wordings = set()
    for _ in range(500):
        scene = random_scene(rng, held_out="any")
        text = caption(scene, rng)
        wordings.add(text.split()[1])
        assert parse_caption(text) == scene
    assert {"big", "large", "small", "little"} <= wordings  # the grammar varies its wording


def test_training_scenes_never_contain_held_out_pairs():
    rng = random.Random(1)
    for _ in range(300):
        assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for o in random_scene(rng).objects)
        assert any((o.colour, o.shape) in HELD_OUT_PAIRS for o in random_scene(rng, held_out="only").objects)


def test_words_outside_the_world_parse_to_nothing():
    assert parse_caption("a sunset over the sea") is None


@pytest.mark.parametrize("build, message", [
    (lambda: Scene(()), "1 to 3"),
    (lambda: WorldObject("left", "hexagon", "red", "small"), "unknown shape"),
    (lambda: WorldObject("upstairs", "circle", "red", "small"), "unknown position"),
])
def test_malformed_scenes_get_a_clear_error(build, message):
    with pytest.raises(SceneError, match=message):
        build()


def test_checker_marks_the_wrong_category():
    asked = parse_caption("a large red circle on the left and a small blue square on the right")
    assert check(asked, asked).passed
    wrong_colour = parse_caption("a large green circle on the left and a small blue square on the right")
    result = check(asked, wrong_colour)
    assert not result.passed and result.checks["colour"] is False and result.checks["position"] is True
    assert result.checks["colour binding"] is False and result.checks["two objects"] is True
    moved = parse_caption("a large red circle on the right and a small blue square on the left")
    result = check(asked, moved)
    assert result.checks["position"] is False and result.checks["colour binding"] is True
    assert check(asked, None).passed is False


def test_checker_rejects_malformed_input():
    with pytest.raises(SceneError):
        check({"objects": []}, None)


def test_recognizer_reads_fresh_drawings():
    from wordsworlds.world.recognizer import Recognizer

    rng = random.Random("test-fresh")
    scenes = [random_scene(rng, held_out="any") for _ in range(200)]
    read = Recognizer.load().read([draw_scene(s, rng=rng, jitter=2.0) for s in scenes])
    accuracy = sum(a == b for a, b in zip(scenes, read)) / len(scenes)
    assert accuracy >= 0.98


def test_training_smoke_run_saves_a_loadable_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from wordsworlds.world.train import TrainConfig, train

    summary = train(TrainConfig.toy(), out=tmp_path / "weights", run_dir=tmp_path / "run")
    assert (tmp_path / "weights" / "model_index.json").exists()
    assert (tmp_path / "recognizer" / "model.safetensors").exists()
    assert "in_distribution" in summary["evaluation"]  # the in-memory pipeline, scored before it is saved
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "weights")
    image = pipe("a red circle on the left", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (64, 64)
    # Rerunning resumes from the checkpoints instead of starting over.
    log_lines = (tmp_path / "run" / "loss.csv").read_text().count("\n")
    train(TrainConfig.toy(), out=tmp_path / "weights", run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "loss.csv").read_text().count("\n") == log_lines


def test_the_scene_probe_reads_only_end_of_text_states_of_captioned_rows():
    import torch

    from wordsworlds.world.recognizer import scene_to_labels
    from wordsworlds.world.scene import parse_caption
    from wordsworlds.world.train import SceneProbe

    torch.manual_seed(0)
    probe, eos = SceneProbe(hidden=16), 9
    ids = torch.tensor([[0, 5, 6, eos, eos], [0, eos, eos, eos, eos]])  # a caption, then an empty one
    states = torch.randn(2, 5, 16, requires_grad=True)
    labels = torch.tensor([scene_to_labels(parse_caption("a large red circle on the left"))] * 2)
    loss = probe.loss(states, ids, eos, labels, has_scene=torch.tensor([True, False]))
    loss.backward()
    touched = states.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, False, False, True, True], [False] * 5]
    # No captioned row at all (a batch of dropped captions): no loss, and no error.
    assert probe.loss(states, ids, eos, labels, has_scene=torch.tensor([False, False])).item() == 0.0


def test_words_outside_the_world_are_named():
    from wordsworlds.world.scene import outside_words, world_note

    assert outside_words("a sunset over the sea") == ["sunset", "sea"]
    assert outside_words("a big red disc in the middle and a small box on top") == []
    assert "sunset, sea" in world_note("a sunset over the sea") and "shapes world" in world_note("a dog")
    assert world_note("a large red circle on the left") == ""
