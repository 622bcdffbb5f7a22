"""The worlds engine with the shipped miniature Stable Diffusion (offline, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_cli
from wordsworlds.errors import InputError
from wordsworlds.presets import STORYBOOK_WORLD
from wordsworlds.world.scene import parse_caption
from wordsworlds.worlds.diffusion import SCHEDULERS, ImageGenerator, StepFrame, validate_render_options
from wordsworlds.worlds.noising import noise_image

PROMPT = "a large red cat on the left"


@pytest.fixture(scope="module")
def engine():
    return ImageGenerator.load(TINY)


def test_the_shipped_folder_is_a_standard_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(STORYBOOK_WORLD)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"
    assert pipe.vae_scale_factor == 4  # 16x16 latents: at 1/8 of the side a thing was one or two latent cells


def test_seeded_render_is_reproducible(engine):
    a = engine.render(PROMPT, steps=10, seed=3).image
    b = engine.render(PROMPT, steps=10, seed=3).image
    c = engine.render(PROMPT, steps=10, seed=4).image
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_a_seeded_render_is_read_back_as_the_scene_asked_for(engine):
    from wordsworlds.hybrid.describe import describe

    from wordsworlds.world.checker import check

    scene, _ = describe(TINY, engine.render(PROMPT, steps=20, seed=0).image)
    result = check(parse_caption(PROMPT), scene)  # kind, colour, size and position, all from the words
    assert result.passed and scene.objects == parse_caption(PROMPT).objects, result.findings


def test_step_stream_yields_one_frame_per_step_and_ends_near_the_image(engine):
    items = list(engine.stream(PROMPT, steps=12, seed=1))
    frames, result = items[:-1], items[-1]
    assert len(frames) == 12 and all(isinstance(f, StepFrame) for f in frames)
    assert [f.step for f in frames] == list(range(1, 13))
    assert result.stats.unet_evaluations == 24  # two per step with guidance
    assert all(f.x0 is not None and f.x0.size == (64, 64) for f in frames)
    assert frames[0].x0_decoded and frames[-1].x0_decoded  # full decodes: first (budget unspent) and last
    assert result.stats.preview_s <= 0.15 * sum(result.stats.step_times_s) + result.stats.mean_step_s * 2
    last_x0 = np.asarray(frames[-1].x0, dtype=np.float32)
    final = np.asarray(result.image, dtype=np.float32)
    assert np.abs(last_x0 - final).mean() < 8  # within a few grey levels of 255


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs(engine, scheduler):
    result = engine.render(PROMPT, steps=4, scheduler=scheduler)
    assert result.image.size == (64, 64) and result.stats.steps == 4


def test_cancel_stops_early(engine):
    calls = []
    items = list(engine.stream(PROMPT, steps=30, should_stop=lambda: calls.append(1) or len(calls) >= 3))
    assert len(items) - 1 == 3 and items[-1].stats.stopped_by == "cancelled"


def test_noising_explorer_reports_the_schedule_noise_level(engine):
    from wordsworlds.world.draw import draw_scene

    alphas = engine.pipe.scheduler.alphas_cumprod
    for t in (0, 500, 999):
        result = noise_image(engine.pipe, draw_scene(parse_caption(PROMPT)), t)
        assert result.noise == pytest.approx(float((1 - alphas[t]).sqrt()), rel=1e-5)
        assert result.signal ** 2 + result.noise ** 2 == pytest.approx(1.0)
    assert noise_image(engine.pipe, draw_scene(parse_caption(PROMPT)), 999).noise > 0.99


def test_forward_noising_runs_forwards_from_clean_to_noise(engine):
    """t=0 shows the picture (a VAE round trip), t=999 shows noise: the error grows with t."""
    from wordsworlds.world.draw import draw_scene

    clean = draw_scene(parse_caption(PROMPT))
    target = np.asarray(clean, dtype=np.float32)
    errors = [np.abs(np.asarray(noise_image(engine.pipe, clean, t).noisy, dtype=np.float32) - target).mean()
              for t in (0, 250, 500, 750, 999)]
    assert errors[0] < 10 and errors == sorted(errors) and errors[-1] > 3 * errors[0]


def test_noising_makes_every_tensor_on_the_models_device(tmp_path):
    """On the `meta` device any tensor made on the CPU and fed to a module would fail with a device
    mismatch; the only failure allowed is the final copy out to a picture, which meta cannot do."""
    from diffusers import StableDiffusionPipeline

    from fixtures_tiny import save_tiny_sd

    pipe = StableDiffusionPipeline.from_pretrained(save_tiny_sd(tmp_path / "sd"), safety_checker=None,
                                                   requires_safety_checker=False).to("meta")
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        noise_image(pipe, Image.new("RGB", (64, 64)), 500)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"), (dict(steps=10_000), "steps"), (dict(guidance_scale=float("nan")), "finite"),
    (dict(guidance_scale=-1), "guidance"), (dict(scheduler="magic"), "unknown scheduler"),
    (dict(height=63), "multiple of 8"), (dict(width=4096), "multiple of 8"),
])
def test_bad_render_options_are_rejected(kwargs, message):
    with pytest.raises(InputError, match=message):
        validate_render_options(**kwargs)


def test_bad_uploads_are_rejected(engine):
    with pytest.raises(InputError, match="image"):
        noise_image(engine.pipe, "not an image", 10)
    with pytest.raises(InputError, match="limit"):
        noise_image(engine.pipe, Image.new("RGB", (5000, 5000)), 10)
    with pytest.raises(InputError, match="timestep"):
        noise_image(engine.pipe, Image.new("RGB", (64, 64)), 5000)


def test_both_halves_answer_through_gradio_client(app_client):
    from gradio_client import handle_file

    noisy, x0, final, meter = app_client.predict(PROMPT, 4, 5.0, "", 0, "ddim", api_name="/render_image")
    assert Image.open(final).size == (64, 64) and "8** U-Net evaluations" in meter
    outputs = app_client.predict(PROMPT, 4, 0, 0, 1, 4, 5.0, "", 0, "ddim", api_name="/compare")
    shaded, final, timeline = outputs[0], outputs[5], outputs[-1]
    kinds = {row[0] for row in timeline["data"]}
    assert shaded and Image.open(final).size == (64, 64) and kinds == {"token", "step"}
    noisy, guess, _ = app_client.predict(handle_file("examples/images/snowman_and_stars_at_night.png"), 300, 0,
                                         api_name="/explore_noise")
    assert Image.open(noisy).size == (64, 64)
    with pytest.raises(Exception, match="magic"):  # the dropdown's own check names the bad value
        app_client.predict(PROMPT, 4, 5.0, "", 0, "magic", api_name="/render_image")


def test_cli_render_writes_the_image_and_rejects_bad_input(tmp_path, capsys):
    import json

    out = tmp_path / "render.png"
    code, stdout, err = run_cli(capsys, "render", PROMPT, "--steps", "5", "--out", str(out),
                                "--frames", str(tmp_path / "frames"), "--json")
    assert code == 0, err
    assert json.loads(stdout)["stats"]["steps"] == 5 and Image.open(out).size == (64, 64)
    assert len(list((tmp_path / "frames").glob("*_x0.png"))) == 5
    for args, message in [(["--steps", "0"], "steps"), (["--guidance-scale", "nan"], "finite"),
                          (["--height", "65"], "multiple of 8"), (["--seed", "-1"], "seed")]:
        code, _, err = run_cli(capsys, "render", PROMPT, *args)
        assert code == 2 and message in err and err.count("\n") == 1


def test_an_abandoned_stream_stops_its_worker(engine):
    import threading

    before = threading.active_count()
    stream = engine.stream(PROMPT, steps=60)
    next(stream)
    stream.close()  # what Gradio does when a user presses Stop
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before


def test_a_long_prompt_gets_its_message_on_every_endpoint(app_client):
    """2,001 to 4,000 characters once passed the words side's check and failed inside the worlds side
    with a bare "Error"; one limit now holds everywhere, with its message."""
    long = "a red cat " * 260  # 2,600 characters
    for api_name, args in [("/compare", (long, 4, 0, 0, 1, 4, 5.0, "", 0, "ddim")),
                           ("/render_image", (long, 4, 5.0, "", 0, "ddim")), ("/generate_text", (long, 4, 0, 0, 1, 0))]:
        with pytest.raises(Exception, match="2,600 characters; the limit is 2,000"):
            app_client.predict(*args, api_name=api_name)


def test_outputs_of_a_run_never_share_a_file_and_the_timeline_is_in_time_order(app_client):
    noisy, x0, final, meter = app_client.predict(PROMPT, 6, 5.0, "", 0, "dpm++", api_name="/render_image")
    assert len({noisy, x0, final}) == 3 and final.endswith(".png")
    assert "12** U-Net evaluations" in meter  # the meter counts as it goes, not "0 U-Net evaluations"
    outputs = app_client.predict(PROMPT, 8, 0, 0, 1, 6, 5.0, "", 0, "dpm++", api_name="/compare")
    times = [row[2] for row in outputs[-1]["data"]]
    assert times == sorted(times) and len(times) >= 8


def test_the_image_cache_reuses_a_file_instead_of_rewriting_it(tmp_path):
    from wordsworlds.ui.common import _save_pil_to_cache_atomically

    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    first = _save_pil_to_cache_atomically(picture, str(tmp_path))
    written = Path(first).stat().st_mtime_ns
    assert _save_pil_to_cache_atomically(picture.copy(), str(tmp_path)) == first
    assert Path(first).stat().st_mtime_ns == written  # not rewritten while a browser may be reading it
    assert not list(Path(first).parent.glob(".writing-*"))


def test_an_out_of_world_prompt_says_so_under_the_picture(app_client):
    *_, meter = app_client.predict("a dragon over a castle", 2, 5.0, "", 0, "ddim", api_name="/render_image")
    assert "knows only its storybook world" in meter and "no dragon, castle" in meter
    *_, meter = app_client.predict(PROMPT, 2, 5.0, "", 0, "ddim", api_name="/render_image")
    assert "storybook world" not in meter


def test_token_chips_show_whole_characters_and_the_end_token_by_name():
    from wordsworlds.ui.side_by_side import END_CHIP, add_token, mark_stopped
    from wordsworlds.words.next_token import TokenStep

    shaded, records = [], []
    for step in [TokenStep(0, 1, "Caf", 0.9, [], 0.1), TokenStep(1, 2, "", 0.5, [], 0.2),
                 TokenStep(2, 3, "é", 0.8, [], 0.3), TokenStep(3, 4, "", 0.7, [], 0.4, end=True)]:
        add_token(shaded, records, step)
    assert [text for text, _ in shaded] == ["Caf", "é", END_CHIP] and [r["index"] for r in records] == [0, 2, 3]
    text, image = mark_stopped("5 tokens · stopped by …", "step **3/20** · 6 U-Net evaluations")
    assert "Stop pressed" in text and "Stop pressed" in image
    assert mark_stopped("stopped by eos", "step 20/20 · done") == ("stopped by eos", "step 20/20 · done")


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG file whose header claims width x height, with no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_a_huge_upload_is_refused_from_its_header_before_decoding(engine, tmp_path):
    # The file holds no pixels: were it decoded, the error would be a decoding error, not the size limit.
    with pytest.raises(InputError, match="12000x12000; the limit is 4096x4096"):
        noise_image(engine.pipe, str(png_header(tmp_path / "huge.png", 12000, 12000)), 10)
    with pytest.raises(InputError, match="not an image this app can read"):
        noise_image(engine.pipe, str(png_header(tmp_path / "empty.png", 64, 64)), 10)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(InputError, match="not an image this app can read"):
        noise_image(engine.pipe, str(tmp_path / "text.png"), 10)
    assert noise_image(engine.pipe, "examples/images/snowman_and_stars_at_night.png", 10).noisy.size == (64, 64)


def test_a_huge_prompt_is_refused_before_the_tokens_view_loads_the_model(monkeypatch):
    import gradio as gr

    from wordsworlds.ui.inside import InsideDiffusion

    def no_loading(*args, **kwargs):
        raise AssertionError("the diffusion model loaded for hostile input")

    monkeypatch.setattr(ImageGenerator, "load", no_loading)
    with pytest.raises(gr.Error, match="100,000 characters"):
        InsideDiffusion(TINY).diffusion_tokens("x" * 100_000)
