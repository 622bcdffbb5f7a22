"""The storybook world: scenes, captions, the checker, the recognizer, and a training smoke run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from wordsworlds.world.checker import check
from wordsworlds.world.draw import draw_scene
from wordsworlds.world.scene import (
    BACKGROUNDS, COLOURS, COUNTS, HELD_OUT_PAIRS, KINDS, POSITIONS, SIZES, Scene, SceneError, WorldObject, caption,
    parse_caption, random_scene,
)


def test_the_world_has_the_promised_variety():
    assert len(KINDS) >= 16 and len(COLOURS) >= 6 and len(SIZES) >= 2 and len(POSITIONS) >= 5
    assert COUNTS == (1, 2, 3) and {"day", "night", "sunset", "space", "sea", "sea at sunset", "snow at night"} <= set(BACKGROUNDS)
    for kind in ("sun", "moon", "cloud", "tree", "house", "boat", "fish", "bird", "cat", "dog", "snowman", "rocket"):
        assert kind in KINDS


def test_every_kind_is_drawn_and_looks_different():
    """Each kind leaves its own picture on the same spot (no two drawers draw the same thing)."""
    pictures = {draw_scene(Scene((WorldObject("center", kind, "red", "large"),), "day")).tobytes() for kind in KINDS}
    assert len(pictures) == len(KINDS)
    backgrounds = {draw_scene(Scene((WorldObject("center", "cat", "red", "large"),), b)).tobytes() for b in BACKGROUNDS}
    assert len(backgrounds) == len(BACKGROUNDS)


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
        wordings.update(text.replace(",", " ").split())
        assert parse_caption(text) == scene
        assert parse_caption(caption(scene)) == scene
    # The grammar varies its wording: synonyms, plurals, both wordings of a background.
    assert {"big", "large", "small", "little", "kitten", "puppy", "people", "meadow", "night"} <= wordings


def test_training_scenes_never_contain_held_out_pairs():
    rng = random.Random(1)
    for _ in range(300):
        assert not any((o.colour, o.kind) in HELD_OUT_PAIRS for o in random_scene(rng).objects)
        assert any((o.colour, o.kind) in HELD_OUT_PAIRS for o in random_scene(rng, held_out="only").objects)


def test_words_outside_the_world_parse_to_nothing():
    assert parse_caption("a sunset over the sea") is None  # an idea, not a scene: the planner's job
    assert parse_caption("a dragon on the left") is None


@pytest.mark.parametrize("text, expected", [
    ("two small white clouds at the top and a big yellow sun on the left, at sunset",
     "a large yellow sun on the left and two small white clouds at the top, at sunset"),
    ("three tiny red fish below, by the sea at night", "three small red fish at the bottom, on the sea at night"),
    ("in outer space, a big purple rocket in the middle", "a large purple rocket in the center, in space"),
    ("a little brown puppy on the right", "a small brown dog on the right"),
])
def test_captions_parse_to_the_canonical_scene(text, expected):
    assert caption(parse_caption(text)) == expected


@pytest.mark.parametrize("text", [
    "a large red cat on the left, in space on the grass",  # no ground in space
    "a large red cat on the left, at night at sunset",  # two skies
    "a large red cat on the left, on the sea in the snow",  # two grounds
    "two large red cat on the left",  # number and noun disagree
    "a large red cats on the left",
])
def test_contradictory_captions_parse_to_nothing(text):
    assert parse_caption(text) is None


@pytest.mark.parametrize("build, message", [
    (lambda: Scene(()), "1 to 3"),
    (lambda: WorldObject("left", "hexagon", "red", "small"), "unknown kind"),
    (lambda: WorldObject("upstairs", "cat", "red", "small"), "unknown position"),
    (lambda: WorldObject("left", "cat", "red", "small", 4), "unknown count"),
    (lambda: Scene((WorldObject("left", "cat", "red", "small"),), "volcano"), "unknown background"),
])
def test_malformed_scenes_get_a_clear_error(build, message):
    with pytest.raises(SceneError, match=message):
        build()


def test_checker_marks_the_wrong_category():
    asked = parse_caption("a large red cat on the left and a small blue boat on the right, on the sea")
    assert check(asked, asked).passed
    wrong_colour = parse_caption("a large green cat on the left and a small blue boat on the right, on the sea")
    result = check(asked, wrong_colour)
    assert not result.passed and result.checks["colour"] is False and result.checks["position"] is True
    assert result.checks["colour binding"] is False and result.checks["two objects"] is True
    moved = parse_caption("a large red cat on the right and a small blue boat on the left, on the sea")
    result = check(asked, moved)
    assert result.checks["position"] is False and result.checks["colour binding"] is True
    other_sky = parse_caption("a large red cat on the left and a small blue boat on the right, on the sea at night")
    result = check(asked, other_sky)
    assert result.checks["background"] is False and result.checks["kind"] is True and not result.passed
    two = parse_caption("a large red cat on the left and two small blue boats on the right, on the sea")
    result = check(asked, two)
    assert result.checks["counting"] is False and "count came out 2" in " ".join(result.findings)
    assert check(asked, None).passed is False
    # A request that names no background is not checked on it.
    assert "background" not in check(parse_caption("a large red cat on the left"), other_sky).checks


def test_checker_rejects_malformed_input():
    with pytest.raises(SceneError):
        check({"objects": []}, None)


def test_recognizer_reads_fresh_drawings():
    from wordsworlds.world.recognizer import Recognizer

    rng = random.Random("test-fresh")
    # 1,000 scenes: at 200 one miss moves the figure by 0.005, a third of the way from 0.985 to the target.
    scenes = [random_scene(rng, held_out="any") for _ in range(1000)]
    read = Recognizer.load().read([draw_scene(s, rng=rng, jitter=2.0) for s in scenes])
    accuracy = sum(a == b for a, b in zip(scenes, read)) / len(scenes)
    assert accuracy >= 0.98


def test_training_smoke_run_saves_a_loadable_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from dataclasses import replace

    from wordsworlds.world.train import TrainConfig, train

    config = replace(TrainConfig.toy(), unet_thing_weight=4.0)  # the things' latent cells weigh more
    summary = train(config, out=tmp_path / "weights", run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "thing_masks.pt").exists()
    assert (tmp_path / "weights" / "model_index.json").exists()
    assert (tmp_path / "recognizer" / "model.safetensors").exists()
    assert "in_distribution" in summary["evaluation"]  # the in-memory pipeline, scored before it is saved
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "weights")
    image = pipe("a red cat on the left", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (64, 64)
    # Rerunning resumes from the checkpoints instead of starting over.
    log_lines = (tmp_path / "run" / "loss.csv").read_text().count("\n")
    train(config, out=tmp_path / "weights", run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "loss.csv").read_text().count("\n") == log_lines


def test_restarted_cosine_is_diffusers_cosine_until_each_end_then_the_longer_one():
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from wordsworlds.world.train import restarted_cosine

    def diffusers_factor(step, total):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return get_cosine_schedule_with_warmup(optimizer, 10, total).lr_lambdas[0](step)

    for step in (0, 5, 10, 50, 99):
        assert restarted_cosine(step, 10, (100, 300)) == pytest.approx(diffusers_factor(step, 100))
    for step in (100, 150, 299):  # past the first end: the cosine to 300, from where it stands
        assert restarted_cosine(step, 10, (100, 300)) == pytest.approx(diffusers_factor(step, 300))
    assert restarted_cosine(99, 10, (100, 300)) < 0.01 < 0.5 < restarted_cosine(100, 10, (100, 300))
    assert restarted_cosine(300, 10, (100, 300)) == pytest.approx(0.0)


def test_thing_masks_cover_the_drawn_things_on_the_latent_grid_and_leave_the_bare_background():
    from wordsworlds.world.train import latent_thing_masks

    left = Scene((WorldObject("left", "cat", "red", "large"),), "grass")
    right = Scene((WorldObject("right", "boat", "white", "small"),), None)  # drawn on the day sky
    masks = latent_thing_masks([left, right], 16)
    assert masks.shape == (2, 1, 16, 16) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[0, 0, :, :6].sum() > 0 and masks[0, 0, :, 11:].sum() == 0  # the cat on the left only
    assert masks[1, 0, :, 10:].sum() > 0 and masks[1, 0, :, :5].sum() == 0  # the boat on the right only
    assert 0 < masks.mean() < 0.5


def test_the_scene_probe_reads_only_end_of_text_states_of_captioned_rows():
    import torch

    from wordsworlds.world.recognizer import scene_to_labels
    from wordsworlds.world.scene import parse_caption
    from wordsworlds.world.train import SceneProbe

    torch.manual_seed(0)
    probe, eos = SceneProbe(hidden=16), 9
    ids = torch.tensor([[0, 5, 6, eos, eos], [0, eos, eos, eos, eos]])  # a caption, then an empty one
    states = torch.randn(2, 5, 16, requires_grad=True)
    labels = torch.tensor([scene_to_labels(parse_caption("a large red cat on the left"))] * 2)
    loss = probe.loss(states, ids, eos, labels, has_scene=torch.tensor([True, False]))
    loss.backward()
    touched = states.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, False, False, True, True], [False] * 5]
    # No captioned row at all (a batch of dropped captions): no loss, and no error.
    assert probe.loss(states, ids, eos, labels, has_scene=torch.tensor([False, False])).item() == 0.0


def test_words_outside_the_world_are_named():
    from wordsworlds.world.scene import outside_words, world_note

    assert outside_words("a dragon over the sea at sunset") == ["dragon"]
    assert outside_words("a big red kitten in the middle and two small puppies on top, in a meadow") == []
    assert "it has no dragon" in world_note("a dragon over the sea") and "storybook world" in world_note("a dog")
    assert world_note("a large red cat on the left") == ""


def test_image_tokens_round_trip_through_the_vq_model_and_its_saved_folder(tmp_path):
    from wordsworlds.world.image_tokens import ImageTokenizer, TokenizerConfig, build_vq

    torch.manual_seed(0)
    tokens = ImageTokenizer(build_vq(TokenizerConfig.toy(), latent_channels=8, latent_size=16, scaling_factor=0.5))
    latents = torch.randn(3, 8, 16, 16)
    codes = tokens.encode(latents)
    assert codes.shape == (3, 64) and tokens.length == 64 and int(codes.max()) < tokens.codes
    decoded = tokens.decode(codes)
    assert decoded.shape == latents.shape
    tokens.save(tmp_path)
    again = ImageTokenizer.load(tmp_path)
    assert torch.equal(again.encode(latents), codes) and torch.allclose(again.decode(codes), decoded)


def test_a_caption_can_say_the_things_in_a_given_order():
    scene = parse_caption("a large red cat on the left and two small blue cars at the top, on the sea")
    order = list(reversed(scene.objects))
    text = caption(scene, order=order)
    assert text.startswith(order[0].phrase()) and parse_caption(text) == scene
    assert caption(scene, random.Random(0), order).index(order[0].colour) < caption(scene, random.Random(0), order).index(order[1].colour)
    with pytest.raises(ValueError, match="own objects"):
        caption(scene, order=order[:1])


def test_the_world_tokenizer_is_the_same_in_every_process():
    """The BPE trainer numbers word-final characters ("a</w>", ",</w>") in hash-map order; build_tokenizer
    renumbers them, so a tokenizer rebuilt in another process (a resumed training run) gives the ids the
    text encoder trained with."""
    import subprocess
    import sys

    script = (
        "import json, random\n"
        "from wordsworlds.world.components import build_tokenizer\n"
        "from wordsworlds.world.scene import caption, random_scene\n"
        "rng = random.Random('0-corpus')\n"
        "tok = build_tokenizer([caption(random_scene(rng, held_out='any'), rng) for _ in range(2000)], 40)\n"
        "print(json.dumps(sorted(tok.get_vocab().items())))\n"
    )
    vocabs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
              for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    vocab = dict(json.loads(vocabs[0]))
    assert vocab[",</w>"] < vocab["a</w>"] < vocab["s</w>"]  # in sorted order
