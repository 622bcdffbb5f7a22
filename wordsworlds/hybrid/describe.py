"""The describer: reads a picture back into words (and, in the storybook world, into a scene).

With the tiny preset this is the project's own recognizer (world/recognizer.py); the Hub
presets describe in free text with a vision-language model (SmolVLM) and read no scene.

    >>> from wordsworlds.hybrid.describe import describe
    >>> scene, text = describe(preset, image)           # doctest: +SKIP
"""

from __future__ import annotations

import torch
from PIL import Image

from ..errors import check_image
from ..models import Describer, load_describer
from ..presets import Preset
from ..world.scene import Scene, caption

DESCRIBE_PROMPT = "Describe this picture in one sentence."
MAX_DESCRIPTION_TOKENS = 96


def describe(preset: Preset, image) -> tuple[Scene | None, str]:
    """(scene or None, a caption of what the picture shows)."""
    image = check_image(image)
    describer = load_describer(preset)
    if describer.recognizer is None:
        return None, describe_image(describer, image)
    scene = describer.recognizer.read([image])[0]
    return scene, caption(scene) if scene else "no storybook-world scene (nothing, or more than three things)"


@torch.inference_mode()
def describe_image(describer: Describer, image: Image.Image, prompt: str = DESCRIBE_PROMPT,
                   max_new_tokens: int = MAX_DESCRIPTION_TOKENS) -> str:
    """One sentence about the picture, greedy, from a vision-language describer."""
    model, processor = describer.model, describer.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    # One tile: the processor's default (longest side 4 x 512 px, cut into 512-px tiles) reads a
    # 512-px render as 17 images, 1088 tokens for SmolVLM-256M; the global view alone is 64 and
    # is enough to say what a generated picture shows.
    tile = processor.image_processor.max_image_size["longest_edge"]
    inputs = processor(text=text, images=[image], size={"longest_edge": tile}, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
