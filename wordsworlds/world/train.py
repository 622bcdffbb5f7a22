"""Train the miniature Stable Diffusion and the recognizer on the storybook world, from one command.

    python -m wordsworlds train                 # the shipped run (77 min from scratch on one core of a 2-core CPU)
    python -m wordsworlds train --toy --out /tmp/mini   # a smoke run of a few steps

Stages, each resumable from its checkpoint in `--run-dir`:
1. recognizer     - a CNN reading drawn scenes (with blur and noise), see recognizer.py;
2. vae            - a KL autoencoder, 64x64x3 <-> 16x16x8 latents (1/4 of the side; SD's 1/8 left a thing
                   one or two latent cells), trained on
                   crops around the drawn things, which weigh ten times the background;
   vae_whole      - then on whole pictures, as it is used;
3. latents        - the training set encoded once, so the U-Net stage never runs the encoder;
4. recognizer_vae - the recognizer fine-tuned on drawings and their VAE round-trips;
5. unet           - U-Net and text encoder together: v-prediction on a zero-terminal-SNR schedule
                   (Lin et al., 2023; `zero_terminal_snr=False` gives SD 1.5's schedule with
                   epsilon prediction and Min-SNR-5 weights, Hang et al., 2023), 10% empty
                   captions for classifier-free guidance (Ho & Salimans, 2022), EMA weights,
                   cosine learning rate with warm-up, and an auxiliary loss that makes the
                   text encoder's end-of-text states spell out the scene (SceneProbe).
Everything is seeded: batch i of a stage is drawn from a generator seeded by (seed, stage, i),
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import ImageFilter
from tqdm.auto import tqdm

from .components import ModelConfig, build_scheduler, build_text_encoder, build_tokenizer, build_unet, build_vae
from .draw import draw_backdrop, draw_scene
from .evaluate import evaluate
from .recognizer import NUM_LOGITS, Recognizer, RecognizerNet, scene_loss, scene_to_labels
from .scene import caption, random_scene

WEIGHTS_DIR = Path(__file__).parent / "weights"
SUMMARY_FILE = "training_summary.json"  # beside every trained folder: its config, history and evaluation


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 32
    recognizer_steps: int = 4000
    recognizer_width: int = 48
    recognizer_vae_steps: int = 1000
    vae_steps: int = 6000
    vae_crop: int = 32  # train on 32x32 crops of the 64x64 drawings (0: whole pictures)
    vae_full_steps: int = 1000  # then on whole pictures (train_vae_whole)
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    vae_thing_weight: float = 10.0  # see thing_weights
    latent_scenes: int = 60000
    # 0.43 s a step on two CPU cores (4 heads, batch 32): 60,000 steps are about 7 hours.
    unet_steps: int = 60000
    # Warm restarts of the cosine learning rate (see restarted_cosine): the shipped run's schedule went to 6,000,
    # then was continued to 18,000, 30,000, 36,000, 48,000 and 60,000, each time from where that longer cosine stands.
    unet_restarts: tuple[int, ...] = (6000, 18000, 30000, 36000, 48000)
    unet_lr: float = 6e-4
    # Weight of the drawn things' latent cells in the U-Net's loss, against 1 for the bare background (see
    # latent_thing_masks). The shipped run used 1.0 to 30,000 steps and 4.0 after (30,000 -> 36,000: held-out exact
    # scenes 0.75 -> 0.82, in distribution 0.845 -> 0.85; no run at 1.0 over the same steps to compare).
    unet_thing_weight: float = 1.0
    warmup_steps: int = 300
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # epsilon prediction only
    zero_terminal_snr: bool = True  # see components.build_scheduler
    # Weight of the text encoder's auxiliary task: read the whole scene (what sits at each of
    # the five places) back out of the caption's end-of-text states. See SceneProbe.
    scene_loss_weight: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    eval_prompts: int = 100
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def toy(cls) -> "TrainConfig":
        """A few steps at toy width: proves the loop end to end in seconds (tests, CI)."""
        return cls(
            batch_size=4, recognizer_steps=3, recognizer_width=8, recognizer_vae_steps=2, vae_steps=3, vae_full_steps=2,
            latent_scenes=16, unet_steps=3, unet_restarts=(), warmup_steps=1,
            checkpoint_every=2, eval_prompts=2,
            model=ModelConfig(vae_channels=(8, 8, 8, 8), unet_channels=(32, 32), text_hidden=32, text_layers=1,
                              text_heads=2, attention_head_dim=8),
        )


def batch_rng(config: TrainConfig, stage: str, step: int) -> random.Random:
    return random.Random(f"{config.seed}-{stage}-{step}")


def images_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


class Stage:
    """Checkpointing and the loss log shared by every stage."""

    def __init__(self, name: str, run_dir: Path, modules: dict, optimizer, scheduler=None):
        self.name, self.run_dir = name, run_dir
        self.modules, self.optimizer, self.lr_scheduler = modules, optimizer, scheduler
        self.path = run_dir / f"{name}.pt"
        self.log = run_dir / "loss.csv"
        self.seconds = 0.0  # training time across every resumed session of this stage

    def resume(self) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for key, module in self.modules.items():
            module.load_state_dict(state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.seconds = state.get("seconds", 0.0)
        print(f"[{self.name}] resumed at step {state['step']}")
        return state["step"]

    def save(self, step: int) -> None:
        state = {key: module.state_dict() for key, module in self.modules.items()}
        state.update(step=step, optimizer=self.optimizer.state_dict(), seconds=self.seconds)
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        torch.save(state, self.path.with_suffix(".tmp"))
        self.path.with_suffix(".tmp").replace(self.path)  # never leave a half-written checkpoint

    def record(self, step: int, loss: float, name: str | None = None) -> None:
        """One loss-log line; `name` labels a second loss of the same stage (e.g. "scene_probe")."""
        with self.log.open("a") as f:
            f.write(f"{name or self.name},{step},{loss:.6f}\n")


def run_loop(stage: Stage, total: int, every: int, step_fn) -> float:
    """Run steps from the last checkpoint to `total`; returns the stage's training seconds."""
    start = stage.resume()
    bar = tqdm(range(start, total), desc=stage.name, initial=start, total=total)
    for step in bar:
        began = time.perf_counter()
        loss = step_fn(step)
        stage.seconds += time.perf_counter() - began
        if step % 25 == 0:
            stage.record(step, loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        if (step + 1) % every == 0 or step + 1 == total:
            stage.save(step + 1)
    return stage.seconds


def train_alone(name: str, model: torch.nn.Module, run_dir: Path, total: int, every: int, lr: float,
                warmup_steps: int, loss_fn) -> float:
    """A stage that trains one model on its own: AdamW, linear warm-up then linear decay (to 5%),
    gradients clipped at 1; `loss_fn(step)` returns the batch's loss. Returns the training seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) * max(0.05, 1 - s / total))
    stage = Stage(name, run_dir, {"model": model}, optimizer, schedule)

    def step_fn(step):
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return loss.item()

    model.train()
    return run_loop(stage, total, every, step_fn)


def train_recognizer(config: TrainConfig, run_dir: Path, vae=None, start_from: RecognizerNet | None = None) -> Recognizer:
    """Train the recognizer on drawn scenes. With a `vae`, fine-tune it (from `start_from`) on
    a mix of drawings and their VAE round-trips, which look like what the diffusion model
    paints: softer edges, rounder corners. Reading those is the recognizer's real job."""
    torch.manual_seed(config.seed)
    name = "recognizer" if vae is None else "recognizer_vae"
    total = config.recognizer_steps if vae is None else config.recognizer_vae_steps
    net = RecognizerNet(width=config.recognizer_width)
    if start_from is not None:
        net.load_state_dict(start_from.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3 if vae is None else 2e-4, weight_decay=1e-4)
    lr = get_cosine_schedule_with_warmup(optimizer, min(100, total // 10), total)
    stage = Stage(name, run_dir, {"net": net}, optimizer, lr)

    def step_fn(step):
        rng = batch_rng(config, name, step)
        scenes = [random_scene(rng, held_out="any") for _ in range(config.batch_size * 2)]
        images = []
        for scene in scenes:  # jitter, blur and noise: generated images are never crisp
            image = draw_scene(scene, rng=rng, jitter=2.0)
            if rng.random() < 0.5:
                image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
            images.append(image)
        x = images_tensor(images)
        if vae is not None:
            with torch.no_grad():
                half = len(x) // 2
                x[:half] = vae.decode(vae.encode(x[:half]).latent_dist.sample()).sample.clamp(-1, 1)
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(step)) * rng.uniform(0, 0.1)
        labels = torch.tensor([scene_to_labels(s) for s in scenes])
        loss = scene_loss(net(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lr.step()
        return loss.item()

    net.train()
    run_loop(stage, total, config.checkpoint_every, step_fn)
    return Recognizer(net)


def thing_weights(x: torch.Tensor, backdrop: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights: `weight` where a thing is drawn (and one pixel around it), 1 on the bare
    background. The things are a tenth of the pixels; with a plain L1 the first VAE learnt the skies
    and grounds and blurred every thing into a blob (the recognizer read back 0.8% of scenes)."""
    drawn = ((x - backdrop).abs().amax(1, keepdim=True) > 0.06).float()
    drawn = F.max_pool2d(drawn, 3, stride=1, padding=1)
    return 1.0 + (weight - 1.0) * drawn


def latent_thing_masks(scenes: list, latent_size: int, chunk: int = 256) -> torch.Tensor:
    """(N, 1, latent_size, latent_size): 1 on the latent cells where a scene's things are drawn (and one cell
    around them), 0 on the bare background. Exact by construction: each scene is drawn once with its things
    and compared with its background drawn alone (the latents' own drawings moved each thing by at most a
    pixel, a quarter of a cell)."""
    backdrops: dict[str, torch.Tensor] = {}
    masks = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        for scene in part:
            name = scene.background or "day"  # what draw_scene draws when a request named no background
            if name not in backdrops:
                backdrops[name] = images_tensor([draw_backdrop(name)])
        x = images_tensor([draw_scene(s) for s in part])
        backdrop = torch.cat([backdrops[s.background or "day"] for s in part])
        masks.append(((x - backdrop).abs().amax(1, keepdim=True) > 0.06).float())
    drawn = F.adaptive_max_pool2d(torch.cat(masks), latent_size)
    return F.max_pool2d(drawn, 3, stride=1, padding=1)


def vae_batch(config: TrainConfig, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of freshly drawn scenes and their per-pixel loss weights (thing_weights)."""
    scenes = [random_scene(rng, held_out="any") for _ in range(config.batch_size)]
    x = images_tensor([draw_scene(s, rng=rng, jitter=1.0) for s in scenes])
    return x, thing_weights(x, images_tensor([draw_backdrop(s.background) for s in scenes]), config.vae_thing_weight)


def crops(x: torch.Tensor, weight: torch.Tensor, size: int, rng: random.Random):
    """One square crop per image, aligned to the 8-pixel latent grid, centred near a drawn thing when
    there is one (so that most of the batch is things, not sky)."""
    out_x, out_w = [], []
    for image, w in zip(x, weight):
        ys, xs = torch.nonzero(w[0] > 1, as_tuple=True)
        if len(ys):
            i = rng.randrange(len(ys))
            cy, cx = int(ys[i]), int(xs[i])
        else:
            cy, cx = rng.randrange(image.shape[1]), rng.randrange(image.shape[2])
        top = min(max(0, (cy - size // 2) // 8 * 8), image.shape[1] - size)
        left = min(max(0, (cx - size // 2) // 8 * 8), image.shape[2] - size)
        out_x.append(image[:, top:top + size, left:left + size])
        out_w.append(w[:, top:top + size, left:left + size])
    return torch.stack(out_x), torch.stack(out_w)


def vae_step(vae, x: torch.Tensor, weight: torch.Tensor, kl_weight: float, optimizer, lr) -> float:
    """One autoencoder step (both stages): thing-weighted L1 on the reconstruction plus a light KL."""
    posterior = vae.encode(x).latent_dist
    loss = (weight * (vae.decode(posterior.sample()).sample - x).abs()).mean() + kl_weight * posterior.kl().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    lr.step()
    return loss.item()


def train_vae(config: TrainConfig, run_dir: Path):
    torch.manual_seed(config.seed)
    vae = build_vae(config.model)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    lr = get_cosine_schedule_with_warmup(optimizer, 100, config.vae_steps)
    stage = Stage("vae", run_dir, {"vae": vae}, optimizer, lr)

    def step_fn(step):
        rng = batch_rng(config, "vae", step)
        x, weight = vae_batch(config, rng)
        if config.vae_crop:  # the autoencoder is convolutional: it learns as well from crops, 4x cheaper
            x, weight = crops(x, weight, config.vae_crop, rng)
        return vae_step(vae, x, weight, config.kl_weight, optimizer, lr)

    vae.train()
    run_loop(stage, config.vae_steps, config.checkpoint_every, step_fn)
    if config.vae_crop and config.vae_full_steps:
        train_vae_whole(config, run_dir, vae)
    return vae.eval()


def train_vae_whole(config: TrainConfig, run_dir: Path, vae) -> None:
    """The autoencoder's last stage: whole pictures, as it sees them in use. Its group norms average
    over the whole picture; trained on crops only, it smeared the things standing on a ground band.
    500 whole-picture steps halved its pixel error (0.047 -> 0.022) and raised the scenes the
    recognizer reads back from its round trips from 0.46 to 0.61 (1,000 scenes)."""
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr / 10)
    lr = get_cosine_schedule_with_warmup(optimizer, 0, config.vae_full_steps)
    stage = Stage("vae_whole", run_dir, {"vae": vae}, optimizer, lr)

    def step_fn(step):
        x, weight = vae_batch(config, batch_rng(config, "vae_whole", step))
        return vae_step(vae, x, weight, config.kl_weight, optimizer, lr)

    vae.train()
    run_loop(stage, config.vae_full_steps, config.checkpoint_every, step_fn)


@torch.no_grad()
def encode_training_set(config: TrainConfig, vae, run_dir: Path):
    """Encode the training scenes once; also sets the VAE's scaling factor (1 / latent std)."""
    path = run_dir / "latents.pt"
    if path.exists():
        data = torch.load(path, weights_only=False)
        vae.register_to_config(scaling_factor=data["scaling_factor"])
        return data["latents"], data["scenes"]
    rng = random.Random(f"{config.seed}-latents")
    scenes = [random_scene(rng) for _ in range(config.latent_scenes)]  # held-out pairs excluded
    chunks = []
    for start in tqdm(range(0, len(scenes), 256), desc="latents"):
        images = [draw_scene(s, rng=rng, jitter=1.0) for s in scenes[start : start + 256]]
        chunks.append(vae.encode(images_tensor(images)).latent_dist.mode())
    latents = torch.cat(chunks)
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    latents = latents * scaling_factor
    torch.save({"latents": latents, "scenes": scenes, "scaling_factor": scaling_factor}, path)
    return latents, scenes


class SceneProbe(torch.nn.Module):
    """A linear read-out of the scene from the text encoder's end-of-text states (training only).

    Colour binding is where the miniature model fails most: the U-Net learns from the
    diffusion loss alone that "red" belongs "on the left" and not to the other object. The
    end-of-text and padding states have seen the whole caption (CLIP's attention is causal)
    and every U-Net cross-attention reads them, so asking each of them to say, linearly,
    the background and which object stands at each of the five places puts the binding into the conditioning
    itself. The probe is not part of the pipeline: the saved text encoder is a plain CLIPTextModel.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.read = torch.nn.Linear(hidden, NUM_LOGITS)

    def loss(self, states: torch.Tensor, ids: torch.Tensor, eos_id: int, scene_labels: torch.Tensor,
             has_scene: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every end-of-text/padding state of every captioned row."""
        mask = (ids == eos_id) & has_scene[:, None]
        if not mask.any():
            return states.sum() * 0.0
        labels = scene_labels[:, None, :].expand(-1, ids.shape[1], -1)[mask]
        return scene_loss(self.read(states[mask]), labels)


def restarted_cosine(step: int, warmup: int, ends: tuple[int, ...]) -> float:
    """The learning-rate factor at `step`: a linear warm-up, then the cosine that decays to zero at the first of
    `ends` still ahead (diffusers' get_cosine_schedule_with_warmup for that end). Past one end the next, longer
    cosine takes over from where it stands, a warm restart; this is how a finished run is continued."""
    if step < warmup:
        return step / warmup
    end = next((e for e in sorted(ends) if step < e), max(ends))
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_unet(config: TrainConfig, run_dir: Path, tokenizer, latents, scenes):
    torch.manual_seed(config.seed)
    unet = build_unet(config.model)
    text_encoder = build_text_encoder(config.model, len(tokenizer), tokenizer.eos_token_id)
    probe = SceneProbe(config.model.text_hidden)
    noise_scheduler = build_scheduler(config.zero_terminal_snr)
    params = list(unet.parameters()) + list(text_encoder.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    lr = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(restarted_cosine, warmup=config.warmup_steps,
                           ends=(*config.unet_restarts, config.unet_steps)))
    ema_unet = EMAModel(unet.parameters(), decay=config.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=config.ema_decay)
    stage = Stage(
        "unet", run_dir,
        {"unet": unet, "text_encoder": text_encoder, "probe": probe, "ema_unet": ema_unet, "ema_text": ema_text},
        optimizer, lr,
    )
    alphas_cumprod = noise_scheduler.alphas_cumprod
    masks = None
    if config.unet_thing_weight != 1.0 and scenes is not None:
        path = run_dir / "thing_masks.pt"
        if not path.exists():
            torch.save(latent_thing_masks(scenes, latents.shape[-1]), path)
        masks = torch.load(path)

    def step_fn(step):
        rng = batch_rng(config, "unet", step)
        generator = torch.Generator().manual_seed(hash((config.seed, step)) & 0xFFFFFFFF)
        index = [rng.randrange(len(scenes)) for _ in range(config.batch_size)]
        captions = ["" if rng.random() < config.caption_dropout else caption(scenes[i], rng) for i in index]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        states = text_encoder(ids)[0]
        prediction = unet(noisy, t, states).sample
        if noise_scheduler.config.prediction_type == "v_prediction" and masks is not None:
            # Each picture's squared error averaged with its things' cells weighing unet_thing_weight.
            weight = 1.0 + (config.unet_thing_weight - 1.0) * masks[index]
            error = (prediction - noise_scheduler.get_velocity(clean, noise, t)) ** 2
            loss = ((weight * error).mean(dim=(1, 2, 3)) / weight.mean(dim=(1, 2, 3))).mean()
        elif noise_scheduler.config.prediction_type == "v_prediction":
            # Uniform weights: Min-SNR's would be 0 at the zero-SNR step, where the layout is decided.
            loss = F.mse_loss(prediction, noise_scheduler.get_velocity(clean, noise, t))
        else:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            weight = snr.clamp(max=config.min_snr_gamma) / snr  # Min-SNR-gamma for epsilon prediction
            loss = (weight * F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        if config.scene_loss_weight:
            labels = torch.tensor([scene_to_labels(scenes[i]) for i in index])
            has_scene = torch.tensor([bool(c) for c in captions])
            scene_loss = probe.loss(states, ids, tokenizer.eos_token_id, labels, has_scene)
            loss_total = loss + config.scene_loss_weight * scene_loss
            if step % 25 == 0:
                stage.record(step, scene_loss.item(), name="scene_probe")
        else:
            loss_total = loss
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        lr.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        return loss.item()

    unet.train()
    text_encoder.train()
    run_loop(stage, config.unet_steps, config.checkpoint_every, step_fn)
    ema_unet.copy_to(unet.parameters())  # ship the averaged weights: smoother samples
    ema_text.copy_to(text_encoder.parameters())
    return unet.eval(), text_encoder.eval(), noise_scheduler


def train(config: TrainConfig, out: Path = WEIGHTS_DIR, run_dir: Path = Path("runs/storybook")) -> dict:
    """Run every stage and save the diffusers folder to `out`, the recognizer beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    started = time.perf_counter()
    recognizer = train_recognizer(config, run_dir)

    corpus_rng = random.Random(f"{config.seed}-corpus")
    corpus = [caption(random_scene(corpus_rng, held_out="any"), corpus_rng) for _ in range(5000)]
    tokenizer = build_tokenizer(corpus, config.model.max_tokens)

    vae = train_vae(config, run_dir)
    latents, scenes = encode_training_set(config, vae, run_dir)
    unet, text_encoder, noise_scheduler = train_unet(config, run_dir, tokenizer, latents, scenes)
    del latents
    recognizer = train_recognizer(config, run_dir, vae=vae, start_from=recognizer.net)

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    recognizer.save(out.parent / "recognizer")

    summary = {"train_config": asdict(config), "stage_seconds": stage_seconds(run_dir),
               "this_invocation_s": time.perf_counter() - started}
    summary["recognizer_exact_scene_accuracy"] = recognizer_accuracy(recognizer, seed=config.seed + 1)
    pipe.set_progress_bar_config(disable=True)
    summary["evaluation"] = evaluate(pipe, recognizer, num_prompts=config.eval_prompts, steps=20)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def stage_seconds(run_dir: Path) -> dict:
    """Training seconds per stage, summed over resumed sessions (None: checkpoint kept no time)."""
    seconds = {}
    for name in ("recognizer", "vae", "vae_whole", "recognizer_vae", "unet"):
        path = run_dir / f"{name}.pt"
        if path.exists():
            value = torch.load(path, weights_only=False, map_location="cpu").get("seconds")
            seconds[name] = None if not value else round(value, 1)
    return seconds


def recognizer_accuracy(recognizer: Recognizer, seed: int, count: int = 2000) -> float:
    """Exact-scene accuracy on freshly drawn scenes (jittered, as in training; other seed)."""
    rng = random.Random(f"fresh-{seed}")
    scenes = [random_scene(rng, held_out="any") for _ in range(count)]
    read = []
    for start in range(0, count, 250):
        read += recognizer.read([draw_scene(s, rng=rng, jitter=2.0) for s in scenes[start : start + 250]])
    return sum(a == b for a, b in zip(scenes, read)) / count
