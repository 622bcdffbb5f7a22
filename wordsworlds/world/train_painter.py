"""Train the next-token painter: a GPT-2 that writes a picture's 64 image tokens one at a time.

    python -m wordsworlds train --model painter               # about 45 min on one core
    python -m wordsworlds train --model painter --toy --out /tmp/painter

The autoregressive image model of the two-by-two (in the line of DALL-E and Parti, at toy
size): the caption's words, then the picture as 8x8 codes of the miniature VAE's latents in
raster order (image_tokens.py), decoded by the same VAE as the miniature Stable Diffusion's.
Stages, each resumable from `--run-dir`:
1. latents         - draw the training scenes and encode them with the miniature VAE;
2. image_tokenizer - a small VQ model learns to put those latents through a codebook
                     (image_tokens.py); every picture is then stored as its 64 codes;
3. painter         - next-token cross-entropy on the picture's codes, 10% of captions empty (so
                     that classifier-free guidance can be used, as Parti does).
One layout for every sequence: `[PAD]... [BOS] caption [SEP] code_1 ... code_64`, the caption
left-padded to `prompt_length`, positions absolute. The folder loads with
`AutoModelForCausalLM` and `AutoTokenizer`; the image tokenizer (a diffusers `VQModel`) sits
in its `image_tokenizer/` subfolder.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from tqdm.auto import tqdm

from .checker import check
from .draw import draw_scene
from .evaluate import prompt_set
from .image_tokens import ImageTokenizer, TokenizerConfig, build_vq
from .recognizer import RECOGNIZER_DIR, Recognizer
from .scene import caption, parse_caption, random_scene
from .train import SUMMARY_FILE, WEIGHTS_DIR, images_tensor, train_alone
from .train_captions import build_tokenizer_for_world, encode_requests

PAINTER_DIR = Path(__file__).parent / "painter"
LAYOUT_FILE = "painter_layout.json"


@dataclass
class PainterModelConfig:
    # 0.8M parameters: 0.85 s per batch of 64 on one core (160 wide and 6 deep: 2.0 s).
    hidden: int = 128
    layers: int = 4
    heads: int = 4


@dataclass
class PainterTrainConfig:
    seed: int = 0
    scenes: int = 30000
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # image_tokens.py
    tokenizer_steps: int = 4000
    tokenizer_batch: int = 64
    tokenizer_lr: float = 1e-3
    restart_every: int = 250  # codes no batch used in that many steps restart at an encoder output
    batch_size: int = 64
    steps: int = 3000
    lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    prompt_length: int = 40  # the miniature Stable Diffusion's text limit too
    checkpoint_every: int = 250
    eval_prompts: int = 100
    model: PainterModelConfig = field(default_factory=PainterModelConfig)

    @classmethod
    def toy(cls) -> "PainterTrainConfig":
        return cls(scenes=64, tokenizer=TokenizerConfig.toy(), tokenizer_steps=3, tokenizer_batch=4, restart_every=2,
                   batch_size=4, steps=3, warmup_steps=1, checkpoint_every=2, eval_prompts=2,
                   model=PainterModelConfig(hidden=16, layers=1, heads=2))


def code_token(index: int) -> str:
    return f"<img{index}>"


def build_painter(config: PainterModelConfig, tokenizer, positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=positions, n_embd=config.hidden, n_layer=config.layers,
        n_head=config.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))


@torch.no_grad()
def encode_scenes(config: PainterTrainConfig, vae, run_dir: Path) -> tuple[list, torch.Tensor]:
    """Stage 1: every training scene drawn and encoded by the VAE (cached in run_dir)."""
    path = run_dir / "latents.pt"
    if path.exists():
        data = torch.load(path, weights_only=False)
        return data["scenes"], data["latents"]
    rng = random.Random(f"{config.seed}-painter-scenes")
    scenes = [random_scene(rng) for _ in range(config.scenes)]  # held-out pairs excluded
    chunks = []
    for start in tqdm(range(0, len(scenes), 250), desc="encode"):
        images = [draw_scene(s, rng=rng, jitter=1.0) for s in scenes[start:start + 250]]
        chunks.append(vae.encode(images_tensor(images)).latent_dist.mode())
    latents = torch.cat(chunks)
    torch.save({"scenes": scenes, "latents": latents}, path)
    return scenes, latents


def train_image_tokenizer(config: PainterTrainConfig, latents: torch.Tensor, scaling_factor: float,
                          run_dir: Path) -> tuple[ImageTokenizer, float]:
    """Stage 2: the VQ model (image_tokens.py) learns to put the VAE's latents through its codebook: mean
    squared error on the (unit-variance) latents plus the codebook's own loss. Codes that no batch picked
    in `restart_every` steps start again at one of the current batch's encoder outputs."""
    torch.manual_seed(config.seed)
    vq = build_vq(config.tokenizer, latents.shape[1], latents.shape[-1], scaling_factor)
    tokens = ImageTokenizer(vq)
    used = torch.zeros(config.tokenizer.codes, dtype=torch.bool)

    def loss_fn(step):
        rows = torch.randint(0, len(latents), (config.tokenizer_batch,),
                             generator=torch.Generator().manual_seed(config.seed * 100003 + step))
        x = latents[rows]
        if step % config.restart_every == 0 and step > 0:
            with torch.no_grad():
                dead = (~used).nonzero().flatten()
                pool = tokens.pre_codes(x).permute(0, 2, 3, 1).reshape(-1, config.tokenizer.code_dim)
                pick = torch.randint(0, len(pool), (len(dead),), generator=torch.Generator().manual_seed(step))
                vq.quantize.embedding.weight.data[dead] = pool[pick]
                used.zero_()
        quantized, codebook_loss, (_, _, ids) = vq.quantize(tokens.pre_codes(x))
        used[ids.flatten()] = True
        out = vq.decode(quantized, force_not_quantize=True).sample
        return F.mse_loss(out, x * scaling_factor) + codebook_loss

    seconds = train_alone("image_tokenizer", vq, run_dir, config.tokenizer_steps, config.checkpoint_every,
                          config.tokenizer_lr, config.warmup_steps, loss_fn)
    return ImageTokenizer(vq.eval()), seconds


@torch.no_grad()
def encode_codes(tokens: ImageTokenizer, latents: torch.Tensor, run_dir: Path) -> torch.Tensor:
    """Stage 3: every training picture as its codes (cached in run_dir)."""
    path = run_dir / "codes.pt"
    if path.exists():
        return torch.load(path)
    codes = torch.cat([tokens.encode(latents[i:i + 1000]) for i in range(0, len(latents), 1000)])
    torch.save(codes, path)
    return codes


def train_painter_model(config: PainterTrainConfig, tokenizer, scenes, codes, code_offset: int, run_dir: Path):
    torch.manual_seed(config.seed)
    length = config.prompt_length + codes.shape[1]
    model = build_painter(config.model, tokenizer, length)

    def loss_fn(step):
        rng = random.Random(f"{config.seed}-painter-{step}")
        rows = [rng.randrange(len(scenes)) for _ in range(config.batch_size)]
        captions = ["" if rng.random() < config.caption_dropout else caption(scenes[r], rng) for r in rows]
        prompt_ids, prompt_mask = encode_requests(tokenizer, captions, config.prompt_length)
        ids = torch.cat([prompt_ids, codes[rows] + code_offset], 1)
        mask = torch.cat([prompt_mask, torch.ones_like(codes[rows])], 1)
        logits = model(ids, attention_mask=mask).logits
        # Predict code k from everything before it: logits at positions prompt_length-1 .. end-1.
        picture_logits = logits[:, config.prompt_length - 1:-1]
        return F.cross_entropy(picture_logits.reshape(-1, logits.shape[-1]), ids[:, config.prompt_length:].reshape(-1))

    seconds = train_alone("painter", model, run_dir, config.steps, config.checkpoint_every, config.lr,
                          config.warmup_steps, loss_fn)
    return model.eval(), seconds


@torch.no_grad()
def paint(model, tokenizer, image_tokenizer: ImageTokenizer, vae, captions: list[str], prompt_length: int,
          code_offset: int, seed: int = 0, do_sample: bool = False) -> list[Image.Image]:
    """Pictures through transformers' own `generate`, restricted to image codes."""
    ids, mask = encode_requests(tokenizer, captions, prompt_length)
    positions = torch.arange(prompt_length).expand(len(captions), -1)
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, position_ids=positions, max_new_tokens=image_tokenizer.length,
                         min_new_tokens=image_tokenizer.length, do_sample=do_sample, top_k=0 if do_sample else None,
                         suppress_tokens=list(range(code_offset)), pad_token_id=tokenizer.pad_token_id)
    codes = out[:, prompt_length:] - code_offset
    return decode_pictures(vae, image_tokenizer.decode(codes))


def decode_pictures(vae, latents: torch.Tensor) -> list[Image.Image]:
    pixels = vae.decode(latents).sample.clamp(-1, 1)
    array = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def evaluate_painter(model, tokenizer, image_tokenizer, vae, recognizer, prompt_length: int, code_offset: int,
                     count: int) -> dict:
    report = {}
    for name in ("in_distribution", "held_out"):
        prompts = prompt_set(name, count if name == "in_distribution" else max(1, count // 2))
        started = time.perf_counter()
        pictures = []
        for start in range(0, len(prompts), 25):
            pictures += paint(model, tokenizer, image_tokenizer, vae, prompts[start:start + 25], prompt_length,
                              code_offset)
        seconds = time.perf_counter() - started
        results = [check(parse_caption(p), seen) for p, seen in zip(prompts, recognizer.read(pictures))]
        report[name] = {"prompts": len(prompts), "overall": sum(r.passed for r in results) / len(prompts),
                        "forward_passes": image_tokenizer.length, "seconds_per_image": round(seconds / len(prompts), 4)}
    return report


def train_painter(config: PainterTrainConfig, out: Path = PAINTER_DIR, run_dir: Path = Path("runs/painter"),
                  vae_folder: Path = WEIGHTS_DIR, recognizer_folder: Path = RECOGNIZER_DIR) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    vae = AutoencoderKL.from_pretrained(vae_folder, subfolder="vae").eval()
    scenes, latents = encode_scenes(config, vae, run_dir)
    image_tokenizer, tokenizer_seconds = train_image_tokenizer(config, latents, vae.config.scaling_factor, run_dir)
    codes = encode_codes(image_tokenizer, latents, run_dir)
    del latents
    words = build_tokenizer_for_world(config.seed)
    code_offset = len(words)
    tokenizer = words
    tokenizer.add_tokens([code_token(i) for i in range(image_tokenizer.codes)])
    model, seconds = train_painter_model(config, tokenizer, scenes, codes, code_offset, run_dir)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_tokenizer.save(out)
    (out / LAYOUT_FILE).write_text(json.dumps({"prompt_length": config.prompt_length, "code_offset": code_offset},
                                              indent=2))
    recognizer = Recognizer.load(recognizer_folder)
    summary = {"train_config": asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
               "train_seconds": round(seconds, 1), "image_tokenizer_train_seconds": round(tokenizer_seconds, 1)}
    rng = random.Random(f"{config.seed}-tokenizer-check")
    check_scenes = [random_scene(rng, held_out="any") for _ in range(300)]
    with torch.no_grad():
        latents = vae.encode(images_tensor([draw_scene(s) for s in check_scenes])).latent_dist.mode()
        round_trip = recognizer.read(decode_pictures(vae, latents))
        tokens_trip = recognizer.read(decode_pictures(vae, image_tokenizer.decode(image_tokenizer.encode(latents))))
    summary["exact_scene_vae_round_trip"] = float(np.mean([a == b for a, b in zip(check_scenes, round_trip)]))
    summary["exact_scene_image_tokens_round_trip"] = float(np.mean([a == b for a, b in zip(check_scenes, tokens_trip)]))
    summary["evaluation"] = evaluate_painter(model, tokenizer, image_tokenizer, vae, recognizer, config.prompt_length,
                                             code_offset, config.eval_prompts)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
