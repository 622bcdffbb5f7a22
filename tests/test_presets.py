"""The Hub presets' loading code, run offline against tiny random models saved in the same layouts.

The folders are built once per session (fixtures_tiny.py) under the Hub ids the presets name,
and found through $WORDSWORLDS_HUB_MIRROR, so every loader is called with its real Hub id.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_tiny import build_mirror
from wordsworlds import hub
from wordsworlds.presets import PRESETS, get_preset
from wordsworlds.text import InputError

HUB_PRESETS = [name for name in PRESETS if name != "tiny"]
PROMPT = "a red circle on the left"
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="loading a LoRA needs peft")


@pytest.fixture(scope="session")
def mirror_folder(tmp_path_factory):
    torch.manual_seed(0)
    return build_mirror(tmp_path_factory.mktemp("hub-mirror"))


@pytest.fixture
def mirror(mirror_folder, monkeypatch):
    """The mirror for one test; the process-wide model caches are emptied after it."""
    from wordsworlds import image

    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror_folder))
    for name in [n for n in os.environ if n.startswith("WORDSWORLDS_")]:
        if name != hub.MIRROR_ENV:
            monkeypatch.delenv(name)
    yield mirror_folder
    for cached in (hub._load_diffusion, hub._load_describer, hub.load_clip, image._shared_generator):
        cached.cache_clear()


def picture(seed: int = 0, side: int = 64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8))


# ---------------------------------------------------------------- presets and sources


def test_every_hub_preset_names_each_role_and_a_clip_model():
    for name in HUB_PRESETS:
        preset = PRESETS[name]
        assert all("/" in source for source in (preset.llm, preset.diffusion, preset.describer, preset.clip))
        assert hub.recipe_for(preset.diffusion) is not None


def test_turbo_recipes_take_one_step_without_guidance():
    for name in ("sd-turbo", "sdxl-turbo"):
        recipe = hub.recipe_for(PRESETS[name].diffusion)
        assert recipe.steps == 1 and recipe.guidance_scale == 0.0 and recipe.size == 512
    assert hub.recipe_for(PRESETS["sd15"].diffusion, few_step="lcm-lora").scheduler == "lcm"
    assert hub.recipe_for(PRESETS["sd-turbo"].diffusion, few_step="lcm-lora").scheduler == "euler"  # none for it


def test_the_clip_role_can_be_overridden_by_env(monkeypatch):
    monkeypatch.setenv("WORDSWORLDS_CLIP", "/models/my-clip")
    assert get_preset("sd15").clip == "/models/my-clip"


def test_resolve_source_reads_the_mirror_only_for_hub_ids_it_holds(mirror):
    assert hub.resolve_source("stabilityai/sd-turbo") == str(mirror / "stabilityai" / "sd-turbo")
    assert hub.resolve_source("someone/not-mirrored") == "someone/not-mirrored"
    assert hub.resolve_source("/abs/folder") == "/abs/folder"


def test_pipeline_class_reads_model_index_and_refuses_other_families(tmp_path, mirror):
    assert hub.pipeline_class("stabilityai/sdxl-turbo").__name__ == "StableDiffusionXLPipeline"
    assert hub.pipeline_class("stabilityai/sd-turbo").__name__ == "StableDiffusionPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline"):
        hub.pipeline_class(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        hub.pipeline_class(str(tmp_path / "missing"))


def test_an_unknown_few_step_option_is_refused(mirror):
    with pytest.raises(ValueError, match="few-step"):
        hub.load_diffusion("stabilityai/sd-turbo", few_step="magic")


# ---------------------------------------------------------------- diffusion, through the step engine


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_each_preset_diffusion_model_streams_steps(mirror, name):
    from wordsworlds.image import ImageGenerator, StepFrame

    source = PRESETS[name].diffusion
    pipe, ran = hub.load_diffusion(source)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if "xl" in name else "StableDiffusionPipeline")
    assert ran[:2] == ("device: cpu", "precision: fp32")
    engine = ImageGenerator.load(source)
    recipe = hub.recipe_for(source)
    items = list(engine.stream(PROMPT, steps=2, guidance_scale=max(recipe.guidance_scale, 2.0),
                               scheduler=recipe.scheduler, seed=1))
    frames, result = items[:-1], items[-1]
    assert [type(f) for f in frames] == [StepFrame, StepFrame] and frames[-1].x0.size == (64, 64)
    assert result.image.size == (64, 64) and result.stats.unet_evaluations == 4  # guided: two per step
    assert engine.accel[-1] == "x0 previews: full VAE"


def test_the_engine_renders_sdxl_without_guidance_and_reproducibly(mirror):
    from wordsworlds.image import ImageGenerator

    engine = ImageGenerator.load("stabilityai/sdxl-turbo")
    a = engine.render(PROMPT, steps=1, guidance_scale=0.0, scheduler="euler", seed=3)
    b = engine.render(PROMPT, steps=1, guidance_scale=0.0, scheduler="euler", seed=3)
    assert a.stats.unet_evaluations == 1 and a.image.tobytes() == b.image.tobytes()


def test_tiny_preview_decoder_serves_the_x0_previews(mirror, monkeypatch):
    from diffusers import AutoencoderTiny

    from wordsworlds.image import ImageGenerator

    monkeypatch.setenv("WORDSWORLDS_PREVIEW_DECODER", "tiny")
    engine = ImageGenerator.load("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert isinstance(engine.preview_decoder, AutoencoderTiny)
    assert engine.accel[-1] == "x0 previews: tiny decoder madebyollin/taesd"
    frames = list(engine.stream(PROMPT, steps=2, seed=0))[:-1]
    assert frames[0].x0.size == (64, 64)


@needs_peft
def test_lcm_lora_is_fused_into_the_unet_and_switches_to_lcm(mirror):
    from wordsworlds.image import ImageGenerator

    source = PRESETS["sd15"].diffusion
    plain, _ = hub.load_diffusion(source)
    fused, ran = hub.load_diffusion(source, few_step="lcm-lora")
    assert type(fused.scheduler).__name__ == "LCMScheduler"
    assert ran[-1].startswith("LCM-LoRA latent-consistency/lcm-lora-sdv1-5 fused")
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    weights = dict(fused.unet.named_parameters())
    assert name in weights and not any("lora" in n for n in weights)  # merged, adapter layers gone
    assert not torch.equal(weights[name], dict(plain.unet.named_parameters())[name])
    recipe = hub.recipe_for(source, few_step="lcm-lora")
    result = ImageGenerator(fused, source).render(PROMPT, steps=recipe.steps, guidance_scale=recipe.guidance_scale,
                                                  scheduler=recipe.scheduler)
    assert result.stats.steps == 4 and result.stats.unet_evaluations == 4  # guidance 1: no second pass


def test_lcm_lora_is_only_loaded_where_one_is_published(mirror):
    pipe, ran = hub.load_diffusion(PRESETS["sd-turbo"].diffusion, few_step="lcm-lora")
    assert ran[-1].startswith("LCM-LoRA not loaded: none is published for stabilityai/sd-turbo")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_lcm_lora_without_peft_keeps_the_model_and_says_why(mirror, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    pipe, ran = hub.load_diffusion(PRESETS["sd15"].diffusion, few_step="lcm-lora")
    assert ran[-1].startswith("LCM-LoRA not loaded") and "pip install peft" in ran[-1]
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


# ---------------------------------------------------------------- LLM, describer, CLIP


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_each_preset_llm_loads_and_streams_tokens(mirror, name):
    from wordsworlds.text import TextGenerator

    model, tokenizer, ran = hub.load_llm(PRESETS[name].llm)
    assert type(model).__name__ == ("Qwen2ForCausalLM" if "Qwen" in PRESETS[name].llm else "LlamaForCausalLM")
    assert ran == "cpu, fp32"
    result = TextGenerator(model, tokenizer, PRESETS[name].llm).generate("Hello!", max_new_tokens=3, top_n=2)
    assert 1 <= result.stats.new_tokens <= 3 and all(len(step.top) == 2 for step in result.steps)


def test_the_describer_reads_one_tile_and_returns_text(mirror, monkeypatch):
    source = PRESETS["sd-turbo"].describer
    model, processor = hub.load_describer(source)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    seen = {}
    generate = model.generate

    def spy(**inputs):
        seen.update(inputs)
        return generate(**inputs)

    monkeypatch.setattr(model, "generate", spy)
    text = hub.describe_image(picture(side=96), source, max_new_tokens=4)
    assert isinstance(text, str)
    assert seen["pixel_values"].shape[:2] == (1, 1)  # one image, one tile: the global view only
    assert int((seen["input_ids"] == model.config.image_token_id).sum()) == processor.image_seq_len


def test_the_describer_refuses_what_is_not_an_image(mirror):
    with pytest.raises(InputError, match="image"):
        hub.describe_image("a picture of a dog", PRESETS["sd15"].describer)


def test_clip_puts_texts_and_images_in_one_unit_length_space(mirror):
    source = PRESETS["sd15"].clip
    texts = hub.clip_embed_texts(["dog", "puppy", "dog"], source)
    images = hub.clip_embed_images([picture(0), np.asarray(picture(1))], source)
    assert texts.shape[1] == images.shape[1] and texts.shape[0] == 3 and images.shape[0] == 2
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert np.allclose(texts[0], texts[2]) and not np.allclose(texts[0], texts[1])


def test_clip_needs_a_preset_with_a_clip_model(mirror, monkeypatch):
    monkeypatch.setenv("WORDSWORLDS_PRESET", "tiny")
    with pytest.raises(InputError, match="CLIP"):
        hub.clip_embed_texts(["dog"])
    with pytest.raises(InputError):
        hub.clip_embed_images([])
