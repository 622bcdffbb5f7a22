"""Layout-grounded rendering: regions, repainting, and a render read back by the recognizer."""

from __future__ import annotations

import torch

from conftest import TINY
from wordsworlds.models import load_describer
from wordsworlds.world.scene import Scene, WorldObject, parse_caption
from wordsworlds.worlds.diffusion import ImageGenerator
from wordsworlds.worlds.layout import region_masks, render_layout, repaint_mask

SCENE = parse_caption("a large red cat on the left and a small blue boat on the right, on the sea")


def test_regions_cover_the_canvas_once_and_sit_on_their_objects():
    masks = region_masks(SCENE, 8)
    assert masks.shape == (3, 1, 8, 8)
    assert torch.equal(masks.sum(0), torch.ones(1, 8, 8))  # every cell has exactly one owner
    left, right = masks[1, 0], masks[2, 0]
    assert left[3:5, 0:2].all() and not left[:, 5:].any()  # the left object's region is on the left
    assert right[3:5, 6:8].all() and not right[:, :3].any()
    assert left.sum() > right.sum()  # a large object gets a larger region than a small one


def test_repaint_keeps_what_came_out_right_and_redraws_the_rest():
    masks = region_masks(SCENE, 8)
    red, blue = SCENE.objects
    wrong_blue = WorldObject(blue.position, blue.kind, "green", blue.size)
    keep = repaint_mask(masks, SCENE, Scene((red, wrong_blue)))
    assert torch.equal(keep, masks[0:1] + masks[1:2])  # background and the red cat stay
    extra = WorldObject("top", "cat", "yellow", "small")
    keep = repaint_mask(masks, SCENE, Scene((red, blue, extra)))
    assert torch.equal(keep, masks[1:2] + masks[2:3])  # an unasked object: the background is redrawn
    assert not repaint_mask(masks, SCENE, None).any()  # nothing read: redraw everything


def test_a_render_is_read_back_as_planned_and_a_redraw_keeps_the_kept_regions():
    pipe = ImageGenerator.load(TINY).pipe
    result = render_layout(pipe, SCENE, steps=20, guidance_scale=5.0, seed=0, regional=False)
    assert load_describer(TINY).recognizer.read([result.image])[0] == SCENE
    assert result.stats.unet_evaluations == 20 * 2  # the whole caption and the unconditional row
    keep = repaint_mask(result.masks, SCENE, Scene(SCENE.objects[:1]))  # as if the blue boat were missing
    redrawn = render_layout(pipe, SCENE, steps=20, guidance_scale=5.0, seed=123, keep=(result.latents, keep))
    assert redrawn.stats.unet_evaluations == 20 * (2 + len(SCENE.objects))  # plus one row per object's region
    kept = keep.bool().expand_as(result.latents)
    assert torch.allclose(redrawn.latents[kept], result.latents[kept])  # the red cat and background stay
    assert not torch.allclose(redrawn.latents[~kept], result.latents[~kept])  # the boat's region is new
