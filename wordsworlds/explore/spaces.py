"""The spaces words live in: five ways to turn a list of words into one vector per word.

Meaning space (what the text says):
- `minilm`       all-MiniLM-L6-v2 sentence embeddings (Reimers & Gurevych, 2019);
- `llm_hidden`   the LLM's hidden states at one layer, mean-pooled over the word's tokens;
- `llm_tokens`   the LLM's input token embeddings, the mean of the word's rows.
Appearance space (what the diffusion model makes of it):
- `clip_text`    the diffusion pipeline's text encoder (the U-Net's conditioning);
- `image_latents` VAE latents of an image rendered from the word, every word from the same seed.

Vectors are cached per (space, source, template, word) for the life of the process.

    >>> from wordsworlds.explore.spaces import Sources, embed
    >>> from wordsworlds.presets import get_preset
    >>> embed(["dog", "puppy", "banana"], "minilm", sources=Sources(get_preset("tiny"))).shape
    (3, 384)
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..models import load_diffusion, load_llm, load_sentence_encoder
from ..presets import Preset
from ..worlds.diffusion import pipeline_with_scheduler

IMAGE_STEPS = 8
IMAGE_GUIDANCE = 5.0
# The storybook world's captions always say a thing's size and place, so a bare word is outside what its
# miniature SD learnt: "cat" alone rendered an empty sky. Without a template of the reader's, a word is drawn as
# the one large thing in the middle of the picture, which is what "appearance" means for that model.
STORYBOOK_TEMPLATE = "a large {} in the center"
IMAGE_SEED = 0  # one seed for every word: the starting noise is shared, so only the word differs
THUMBNAIL = 128  # rendered images are kept at most this wide for the gallery
BATCH = 32
CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Space:
    name: str
    title: str
    kind: str  # "meaning" or "appearance"
    about: str
    short: str  # a few letters for small panels


SPACES = {
    s.name: s
    for s in (
        Space("minilm", "MiniLM sentence encoder", "meaning", "all-MiniLM-L6-v2, mean-pooled, 384 numbers", "MiniLM"),
        Space("llm_hidden", "LLM hidden states", "meaning", "the LLM's residual stream at one layer (default: the middle), mean over the word's tokens", "LLM states"),
        Space("llm_tokens", "LLM token embeddings", "meaning", "the LLM's input embedding rows, mean over the word's tokens", "LLM tokens"),
        Space("clip_text", "Diffusion text encoder", "appearance", "CLIP text encoder, mean over the real tokens (not BOS)", "text encoder"),
        Space("image_latents", "Image latents", "appearance", f"VAE latents of a {IMAGE_STEPS}-step image from seed {IMAGE_SEED}", "image latents"),
    )
}


@dataclass(frozen=True)
class Sources:
    """Where each space's model comes from: the preset's models, and which LLM layer to read."""

    preset: Preset
    llm_layer: int | None = None  # None: the middle layer

    def key(self, space: str) -> tuple:
        if space == "minilm":
            return (self.preset.meaning_encoder,)
        if space == "llm_hidden":
            return (self.preset.llm, self.preset.accel.llm_precision, self.llm_layer)
        if space == "llm_tokens":
            return (self.preset.llm,)
        return (self.preset.diffusion,)


# ---------------------------------------------------------------- the cache


class _Cache:
    """Least-recently-used vectors, bounded in bytes; a lock because handlers run concurrently."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray):
        with self.lock:
            if key in self.items:
                self.bytes -= self.items.pop(key).nbytes
            self.items[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes and len(self.items) > 1:
                self.bytes -= self.items.popitem(last=False)[1].nbytes

    def clear(self):
        with self.lock:
            self.items.clear()
            self.bytes = 0


CACHE = _Cache(CACHE_BYTES)


def fill(word: str, template: str = "") -> tuple[str, tuple[int, int]]:
    """The text a model reads for `word`, and where the word sits in it."""
    if not template:
        return word, (0, len(word))
    start = template.index("{}")
    return template.replace("{}", word, 1), (start, start + len(word))


def embed(words: list[str], space: str, template: str = "", *, sources: Sources) -> np.ndarray:
    """One float32 row per word; words seen before (same space, source, template) come from the cache."""
    if space not in SPACES:
        raise InputError(f"unknown space {space!r}; choose from {', '.join(SPACES)}")
    prefix = (space, sources.key(space), template)
    rows = [CACHE.get(prefix + (w,)) for w in words]
    missing = list(dict.fromkeys(w for w, row in zip(words, rows) if row is None))
    if missing:
        computed = _EMBEDDERS[space](missing, template, sources)
        found = dict(zip(missing, computed))
        for word, row in found.items():
            CACHE.put(prefix + (word,), np.ascontiguousarray(row, dtype=np.float32))
        rows = [found[w] if row is None else row for w, row in zip(words, rows)]
    return np.stack(rows).astype(np.float32, copy=False)


def count_cached(words: list[str], space: str, template: str, sources: Sources) -> int:
    prefix = (space, sources.key(space), template)
    return sum(CACHE.get(prefix + (w,)) is not None for w in words)


def image_template(template: str, preset: Preset) -> str:
    """The template the diffusion model draws a word in: the reader's, else the storybook world's own."""
    return template or (STORYBOOK_TEMPLATE if preset.storybook_world else "")


def rendered_images(words: list[str], template: str, sources: Sources) -> list:
    """Thumbnails (uint8 HxWx3) of the images behind `image_latents`, None where not rendered yet."""
    prefix = ("rendered", sources.key("image_latents"), template)
    return [CACHE.get(prefix + (w,)) for w in words]


# ---------------------------------------------------------------- one function per space


def _minilm(words, template, sources):
    model = load_sentence_encoder(sources.preset).model
    return model.encode([fill(w, template)[0] for w in words], batch_size=64, convert_to_numpy=True)


def llm_layer_index(model, layer: int | None) -> int:
    count = model.config.num_hidden_layers
    if layer is None:
        return count // 2  # middle layers carry more meaning than the last (which predicts the next token)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= count:
        raise InputError(f"the LLM layer must be a whole number from 0 (embeddings) to {count}, got {layer!r}")
    return layer


def _document_start(tokenizer) -> int | None:
    # The token that separates documents in pretraining (SmolLM2, Qwen: <|endoftext|>), else BOS.
    return tokenizer.get_vocab().get("<|endoftext|>", tokenizer.bos_token_id)


@torch.inference_mode()
def _llm(words, template, sources, hidden: bool):
    llm = load_llm(sources.preset)
    model, tokenizer = llm.model, llm.tokenizer
    layer = llm_layer_index(model, sources.llm_layer) if hidden else 0
    start_id = _document_start(tokenizer)
    vectors = []
    for start in range(0, len(words), BATCH):
        # No chat template: the plain text, as a word appears in running text (" dog", a common
        # token, not "dog"), after a document-start token. The first position of a causal LM is
        # an "attention sink" with huge activations (Xiao et al., 2023; Sun et al., 2024): pooled
        # with the word, it made every word's middle-layer vector the same (cosine 1.000 here).
        filled = [(" " + text, (a + 1, b + 1)) for text, (a, b) in (fill(w, template) for w in words[start : start + BATCH])]
        # Right padding keeps positions 0..n-1 for every row, as the model saw them in training.
        batch = tokenizer([text for text, _ in filled], return_tensors="pt", padding=True, padding_side="right",
                          return_offsets_mapping=True, add_special_tokens=False)
        offsets, ids, mask = batch["offset_mapping"], batch["input_ids"], batch["attention_mask"].bool()
        spans = torch.tensor([span for _, span in filled])
        # The word's tokens: those whose characters overlap the word's span in the text.
        in_word = (offsets[..., 0] < spans[:, 1:]) & (offsets[..., 1] > spans[:, :1]) & mask
        in_word |= ~in_word.any(1, keepdim=True) & mask  # never an empty mean
        if start_id is not None:
            column = torch.ones(len(ids), 1, dtype=torch.bool)
            ids = torch.cat([torch.full_like(ids[:, :1], start_id), ids], 1)
            mask, in_word = torch.cat([column, mask], 1), torch.cat([~column, in_word], 1)
        ids, mask = ids.to(model.device), mask.to(model.device)
        if hidden:
            states = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[layer]
        else:
            states = model.get_input_embeddings()(ids)
        states = states.float().cpu()
        weights = in_word.unsqueeze(-1).float()
        vectors.append(((states * weights).sum(1) / weights.sum(1)).float().numpy())
    return np.concatenate(vectors)


@torch.inference_mode()
def _clip_text(words, template, sources):
    # Mean of last_hidden_state over the real tokens, not the pooled (EOS) output: the U-Net
    # reads the whole sequence through cross-attention, and the miniature text encoder was
    # trained only through that path, never with CLIP's contrastive loss that gives the
    # pooled vector its meaning. BOS is left out: in a causal encoder it sees only itself,
    # so its state is the same for every input and would only pull all cosines towards 1.
    pipe = load_diffusion(sources.preset).pipe
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    vectors = []
    for start in range(0, len(words), BATCH):
        texts = [fill(w, template)[0] for w in words[start : start + BATCH]]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        states = encoder(ids.to(encoder.device)).last_hidden_state.float().cpu()
        eos = (ids == tokenizer.eos_token_id).int().argmax(1)  # the first EOS ends the text (pad may equal EOS)
        positions = torch.arange(ids.shape[1])
        real = ((positions >= 1) & (positions <= eos[:, None])).unsqueeze(-1).float()
        vectors.append(((states * real).sum(1) / real.sum(1)).numpy())
    return np.concatenate(vectors)


@torch.inference_mode()
def _image_latents(words, template, sources):
    # A pipeline with its own scheduler: a scheduler keeps per-run state, and concurrent requests
    # stepping the shared one broke each other (the engine does the same for every render).
    pipe = pipeline_with_scheduler(load_diffusion(sources.preset).pipe)
    prefix = ("rendered", sources.key("image_latents"), template)
    template = image_template(template, sources.preset)
    vectors = []
    for start in range(0, len(words), BATCH // 2):
        chunk = words[start : start + BATCH // 2]
        generators = [torch.Generator().manual_seed(IMAGE_SEED) for _ in chunk]
        images = pipe([fill(w, template)[0] for w in chunk], num_inference_steps=IMAGE_STEPS,
                      guidance_scale=IMAGE_GUIDANCE, generator=generators, output_type="pt").images  # [0, 1]
        vae = pipe.vae
        latents = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
        vectors.append(latents.flatten(1).float().cpu().numpy())
        small = torch.nn.functional.interpolate(images, size=min(THUMBNAIL, images.shape[-1]), mode="area")
        for word, image in zip(chunk, small):
            CACHE.put(prefix + (word,), (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(vectors)


_EMBEDDERS = {
    "minilm": _minilm,
    "llm_hidden": functools.partial(_llm, hidden=True),
    "llm_tokens": functools.partial(_llm, hidden=False),
    "clip_text": _clip_text,
    "image_latents": _image_latents,
}


# ---------------------------------------------------------------- how each tokenizer splits a word


def tokenizers(preset: Preset) -> list[tuple[str, object, int]]:
    """[(name, tokenizer, limit)] for each model's tokenizer."""
    llm = load_llm(preset)
    encoder = load_sentence_encoder(preset).model
    clip = load_diffusion(preset).pipe.tokenizer
    return [("LLM (byte-level BPE)", llm.tokenizer, llm.model.config.max_position_embeddings),
            ("MiniLM (WordPiece)", encoder.tokenizer, encoder.max_seq_length),
            ("Diffusion text encoder (CLIP BPE)", clip, clip.model_max_length)]


def tokenize(words: list[str], template: str, preset: Preset) -> list[dict]:
    """How each tokenizer splits each word (with the template filled in): pieces, ids, count and limit."""
    found = tokenizers(preset)
    rows = []
    for word in words:
        text = fill(word, template)[0]
        for name, tokenizer, limit in found:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            specials = len(tokenizer(text)["input_ids"]) - len(ids)  # BOS/EOS/[CLS]/[SEP] the model also reads
            rows.append({
                "text": text, "tokenizer": name, "pieces": tokenizer.convert_ids_to_tokens(ids), "ids": ids,
                "tokens": len(ids) + specials, "limit": limit, "truncated": len(ids) + specials > limit,
            })
    return rows
