"""Train the miniature Stable Diffusion and the recognizer on the shapes world, from one command.

    python -m wordsworlds train                 # the shipped run (77 min from scratch on one core of a 2-core CPU)
    python -m wordsworlds train --toy --out /tmp/mini   # a smoke run of a few steps

Stages, each resumable from its checkpoint in `--run-dir`:
1. recognizer     - a CNN reading drawn scenes (with blur and noise), see recognizer.py;
2. vae            - a KL autoencoder, 64x64x3 <-> 8x8x4 latents (1/8, as in SD);
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
import random
import time
from dataclasses import asdict, dataclass, field
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
from .draw import draw_scene
from .evaluate import evaluate
from .recognizer import NUM_CLASSES, Recognizer, RecognizerNet, scene_to_labels
from .scene import POSITIONS, caption, random_scene

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 32
    recognizer_steps: int = 2500
    recognizer_width: int = 32
    recognizer_vae_steps: int = 1500
    vae_steps: int = 1400
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    latent_scenes: int = 60000
    unet_steps: int = 6000
    unet_lr: float = 6e-4
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
            batch_size=4, recognizer_steps=3, recognizer_width=8, recognizer_vae_steps=2, vae_steps=3, latent_scenes=16, unet_steps=3, warmup_steps=1,
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
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3 if vae is None else 5e-4, weight_decay=1e-4)
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
        loss = F.cross_entropy(net(x).flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lr.step()
        return loss.item()

    net.train()
    run_loop(stage, total, config.checkpoint_every, step_fn)
    return Recognizer(net)


def train_vae(config: TrainConfig, run_dir: Path):
    torch.manual_seed(config.seed)
    vae = build_vae(config.model)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    lr = get_cosine_schedule_with_warmup(optimizer, 100, config.vae_steps)
    stage = Stage("vae", run_dir, {"vae": vae}, optimizer, lr)

    def step_fn(step):
        rng = batch_rng(config, "vae", step)
        x = images_tensor([draw_scene(random_scene(rng, held_out="any"), rng=rng, jitter=1.0) for _ in range(config.batch_size)])
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(reconstruction, x) + config.kl_weight * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lr.step()
        return loss.item()

    vae.train()
    run_loop(stage, config.vae_steps, config.checkpoint_every, step_fn)
    return vae.eval()


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
    which object stands at each of the five places puts the binding into the conditioning
    itself. The probe is not part of the pipeline: the saved text encoder is a plain CLIPTextModel.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.read = torch.nn.Linear(hidden, len(POSITIONS) * NUM_CLASSES)

    def loss(self, states: torch.Tensor, ids: torch.Tensor, eos_id: int, scene_labels: torch.Tensor,
             has_scene: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every end-of-text/padding state of every captioned row."""
        mask = (ids == eos_id) & has_scene[:, None]
        if not mask.any():
            return states.sum() * 0.0
        logits = self.read(states[mask]).view(-1, len(POSITIONS), NUM_CLASSES)
        labels = scene_labels[:, None, :].expand(-1, ids.shape[1], -1)[mask]
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def train_unet(config: TrainConfig, run_dir: Path, tokenizer, latents, scenes):
    torch.manual_seed(config.seed)
    unet = build_unet(config.model)
    text_encoder = build_text_encoder(config.model, len(tokenizer), tokenizer.eos_token_id)
    probe = SceneProbe(config.model.text_hidden)
    noise_scheduler = build_scheduler(config.zero_terminal_snr)
    params = list(unet.parameters()) + list(text_encoder.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    lr = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.unet_steps)
    ema_unet = EMAModel(unet.parameters(), decay=config.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=config.ema_decay)
    stage = Stage(
        "unet", run_dir,
        {"unet": unet, "text_encoder": text_encoder, "probe": probe, "ema_unet": ema_unet, "ema_text": ema_text},
        optimizer, lr,
    )
    alphas_cumprod = noise_scheduler.alphas_cumprod

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
        if noise_scheduler.config.prediction_type == "v_prediction":
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


def train(config: TrainConfig, out: Path = WEIGHTS_DIR, run_dir: Path = Path("runs/shapes")) -> dict:
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
    recognizer = train_recognizer(config, run_dir, vae=vae, start_from=recognizer.net)

    unet, text_encoder, noise_scheduler = train_unet(config, run_dir, tokenizer, latents, scenes)

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
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def stage_seconds(run_dir: Path) -> dict:
    """Training seconds per stage, summed over resumed sessions (None: checkpoint kept no time)."""
    seconds = {}
    for name in ("recognizer", "vae", "recognizer_vae", "unet"):
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
