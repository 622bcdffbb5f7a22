"""The embedding explorer: real MiniLM, LLM and shipped diffusion spaces, projections, bad input,
CLI, and the tab over HTTP."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from conftest import TINY, run_cli
from wordsworlds.errors import InputError
from wordsworlds.explore import explorer as explorer_module
from wordsworlds.explore import spaces as spaces_module
from wordsworlds.explore.explorer import MAX_WORD_CHARS, MAX_WORDS, explore, parse_words, word_sets
from wordsworlds.explore.projection import agreement, cosine_matrix, project, rank_shifts
from wordsworlds.explore.spaces import Sources, embed, tokenize

ANIMALS = ["dog", "puppy", "banana", "car"]
SOURCES = Sources(TINY)


def cos(vectors, i, j):
    return float(cosine_matrix(vectors)[i, j])


# ---------------------------------------------------------------- meaning space, real models


def test_minilm_puts_dog_near_puppy_and_far_from_banana():
    vectors = embed(ANIMALS, "minilm", sources=SOURCES)
    assert cos(vectors, 0, 1) > cos(vectors, 0, 2)
    result = explore(TINY, ANIMALS, spaces=["minilm"])
    assert result.neighbours("puppy", k=1)[0]["neighbour"] == "dog"


def test_pca_coordinates_are_deterministic():
    first = explore(TINY, ANIMALS, spaces=["minilm"], projection="pca").coords["minilm"]
    again = project(embed(ANIMALS, "minilm", sources=SOURCES), "pca", 2)[0]
    np.testing.assert_array_equal(first, again)
    assert first.shape == (4, 2)


@pytest.mark.parametrize("space", ["minilm", "llm_hidden", "llm_tokens"])
def test_meaning_spaces_give_one_vector_per_input(space):
    vectors = embed(["dog", "a red cat", "xylophonequux"], space, template="a photo of a {}", sources=SOURCES)
    assert vectors.shape[0] == 3 and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert np.linalg.norm(vectors[0] - vectors[1]) > 0


@pytest.mark.parametrize("space", ["clip_text", "image_latents"])
def test_appearance_spaces_give_one_vector_per_input(space):
    vectors = embed(["red cat", "blue boat", "dog"], space, sources=SOURCES)
    assert vectors.shape[0] == 3 and vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_concurrent_image_latents_do_not_share_a_scheduler():
    """Two explorer requests at once each render with their own scheduler (they broke each other
    when both stepped the shared pipeline's), and each gets what it gets alone."""
    words = [["red cat", "green boat"], ["blue sun", "yellow cat", "purple boat"]]
    alone = [spaces_module._image_latents(w, "", SOURCES) for w in words]
    results, errors = [None, None], []

    def run(i):
        try:
            results[i] = spaces_module._image_latents(words[i], "", SOURCES)
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for a, b in zip(alone, results):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_cache_returns_the_same_vectors_without_recomputing(monkeypatch):
    first = embed(ANIMALS, "minilm", sources=SOURCES)
    monkeypatch.setitem(spaces_module._EMBEDDERS, "minilm", lambda *a: pytest.fail("recomputed"))
    np.testing.assert_array_equal(embed(ANIMALS, "minilm", sources=SOURCES), first)


def test_anchor_axes_put_the_anchors_at_0_and_1():
    result = explore(TINY, "small, large, tiny, huge, dog", spaces=["minilm"], projection="anchors",
                     anchor_from="small", anchor_to="large")
    x = result.coords["minilm"][:, 0]
    assert x[0] == pytest.approx(0, abs=1e-6) and x[1] == pytest.approx(1, abs=1e-6)
    assert result.axes["minilm"][0] == "small → large"


def test_too_few_points_for_tsne_fall_back_to_pca_with_a_notice():
    result = explore(TINY, ANIMALS, spaces=["minilm"], projection="tsne")
    assert any("t-SNE needs at least 5" in n for n in result.notices)
    np.testing.assert_array_equal(result.coords["minilm"], project(embed(ANIMALS, "minilm", sources=SOURCES), "pca", 2)[0])


def test_tokenizer_view_splits_unknown_words_into_pieces():
    rows = tokenize(["xylophonequux"], "", TINY)
    by_name = {r["tokenizer"]: r for r in rows}
    assert {"LLM (byte-level BPE)", "MiniLM (WordPiece)"} <= set(by_name)
    for row in rows:
        assert len(row["pieces"]) > 1 and row["tokens"] <= row["limit"]
        assert "[UNK]" not in row["pieces"]


# ---------------------------------------------------------------- the math, no models


def test_projection_agreement_and_rank_shifts():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 16))
    for dimensions in (2, 3):
        coords, notice, axes = project(vectors, "pca", dimensions)
        assert coords.shape == (10, dimensions) and notice is None and len(axes) == dimensions
    similarity = cosine_matrix(vectors)
    same = agreement(similarity, similarity)
    assert same["spearman"] == pytest.approx(1) and same["flipped"] == pytest.approx(0) and same["pairs"] == 45
    opposite = agreement(similarity, -similarity)
    assert opposite["spearman"] == pytest.approx(-1) and opposite["flipped"] == pytest.approx(1)
    shifts = rank_shifts(similarity, -similarity, [str(i) for i in range(10)], k=2)
    assert len(shifts) == 2 and shifts[0]["rank_a"] in (1, 45)
    assert agreement(similarity[:2, :2], similarity[:2, :2])["spearman"] is None  # one pair: undefined


def test_word_sets_are_well_formed():
    sets = word_sets()
    assert {"animals", "fruits", "vehicles", "colours", "shapes", "feelings", "storybook world"} <= set(sets)
    for chosen in sets.values():
        words, notices = parse_words(chosen["words"])
        assert len(words) == len(chosen["words"]) and not notices


# ---------------------------------------------------------------- bad input, before any model work


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(explorer_module, "embed", lambda *a, **k: pytest.fail("a model ran on bad input"))


@pytest.mark.parametrize("kwargs, message", [
    ({"words": ""}, "no words given"),
    ({"words": " , \n ,"}, "no words given"),
    ({"words": [f"w{i}" for i in range(MAX_WORDS + 1)]}, f"the limit is {MAX_WORDS}"),
    ({"words": ["dog", "x" * 10240]}, f"item 2 .* is 10,240 characters; the limit is {MAX_WORD_CHARS}"),
    ({"words": "x" * 200_000}, "the input is 200,000 characters"),
    ({"words": "dog, dog"}, "only one distinct word"),
    ({"words": 42}, "words must be text"),
    ({"words": "dog, cat", "template": "a photo of a"}, r"must contain \{\} exactly once"),
    ({"words": "dog, cat", "template": "{} and {}"}, r"must contain \{\} exactly once"),
    ({"words": "dog, cat", "spaces": []}, "choose at least one space"),
    ({"words": "dog, cat", "spaces": ["smell"]}, "unknown space"),
    ({"words": "dog, cat", "projection": "mds"}, "unknown projection"),
    ({"words": "dog, cat", "dimensions": 4}, "dimensions must be 2 or 3"),
    ({"words": "dog, cat", "projection": "anchors"}, "custom axes need two anchor words"),
    ({"words": "dog, cat", "projection": "anchors", "anchor_from": "big", "anchor_to": "big"}, "must differ"),
    ({"words": "dog, cat", "llm_layer": 1.5}, "whole number"),
])
def test_bad_input_gets_a_clear_message(no_models, kwargs, message):
    with pytest.raises(InputError, match=message):
        explore(TINY, **kwargs)


def test_duplicates_are_merged_with_a_notice():
    words, notices = parse_words("dog, cat,  dog ,\nCat, cat")
    assert words == ["dog", "cat", "Cat"] and notices == ["merged 2 duplicate(s): cat, dog"]


def test_llm_layer_out_of_range():
    with pytest.raises(InputError, match="from 0 \\(embeddings\\) to"):
        explore(TINY, ANIMALS, spaces=["llm_hidden"], llm_layer=999)


# ---------------------------------------------------------------- the command line


def test_cli_prints_json(capsys):
    code, out, _ = run_cli(capsys, "embed", *ANIMALS, "--space", "minilm", "--json")
    data = json.loads(out)
    assert code == 0 and data["words"] == ANIMALS
    assert data["neighbours"]["puppy"][0]["neighbour"] == "dog"
    assert len(data["spaces"]["minilm"]["coordinates"]) == 4


def test_cli_rejects_bad_input_with_exit_code_2(capsys):
    code, out, err = run_cli(capsys, "embed", "dog", "--space", "minilm")
    assert code == 2 and "error: only one distinct word" in err and not out


# ---------------------------------------------------------------- the tab, through gradio_client on loopback


def test_tab_answers_over_http(app_client):
    outputs = app_client.predict(", ".join(ANIMALS), "", ["minilm"], "pca", 2, "", "", "puppy", "",
                                      api_name="/embed_words")
    scatter, heatmap, neighbours, agreement_table, shifts, gallery, notes = outputs
    assert neighbours["data"][0][:3] == ["minilm", 1, "dog"]  # puppy's nearest
    assert notes.startswith("4 words") and gallery == []
    assert scatter and heatmap


def test_tab_reports_bad_input_over_http(app_client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no words given"):
        app_client.predict("", "", ["minilm"], "pca", 2, "", "", "", "", api_name="/embed_words")


def test_world_words_are_drawn_and_words_outside_the_world_are_flagged():
    from wordsworlds.explore.explorer import empty_canvas
    from wordsworlds.explore.spaces import rendered_images

    result = explore(TINY, "dog, puppy, cat, red cat, blue boat, banana", spaces=["image_latents"])
    images = rendered_images(result.words, result.template, result.sources)
    assert not any(empty_canvas(image) for image in images)  # bare words drawn as one large thing in the middle
    assert not [n for n in result.notices if "empty canvas" in n]
    guessed = [n for n in result.notices if "no word for" in n]
    assert len(guessed) == 1 and guessed[0].startswith("the storybook world has no word for banana:")


def test_a_word_for_a_background_is_said_to_draw_a_bare_scene_not_an_empty_canvas(monkeypatch):
    # Whether the model draws a bare scene for "a large sunset in the center" depends on its weights; here every
    # picture counts as bare, so the notices' routing is what is tested: background words apart from the others.
    import wordsworlds.explore.explorer as explorer

    monkeypatch.setattr(explorer, "empty_canvas", lambda image: True)
    result = explore(TINY, "sunset, snow, cat", spaces=["image_latents"])
    scenery = [n for n in result.notices if "background" in n]
    assert len(scenery) == 1 and scenery[0].startswith("sunset, snow name a background in the storybook world")
    blank = [n for n in result.notices if "empty canvas" in n]
    assert len(blank) == 1 and blank[0].startswith("cat renders as an empty canvas")


def test_a_blank_layer_means_the_middle_one_as_text_or_none():
    from wordsworlds.explore.explorer import parse_layer

    assert parse_layer("") is None and parse_layer(None) is None and parse_layer(" 7 ") == 7 and parse_layer(3) == 3
    default = explore(TINY, ANIMALS, spaces=["llm_hidden"]).similarity["llm_hidden"]
    np.testing.assert_array_equal(explore(TINY, ANIMALS, spaces=["llm_hidden"], llm_layer="").similarity["llm_hidden"],
                                  default)
    with pytest.raises(InputError, match="whole number"):
        parse_layer("middle")


@pytest.mark.parametrize("layer", ["1e400", "nan", "-inf", "2.5", True])
def test_a_layer_that_is_not_a_whole_finite_number_is_refused(layer):
    from wordsworlds.explore.explorer import parse_layer

    with pytest.raises(InputError, match="LLM layer"):
        parse_layer(layer)
