"""Train the paired caption writers: one model per process, same data, same size, same tokenizer.

    python -m wordsworlds train --model captions              # both, about 10 min each on one core
    python -m wordsworlds train --model captions --toy --out /tmp/captions

The task: read a request ("draw a big red kitten at the left and a tiny blue box below") and
write the scene's caption in the world's own words ("a large red cat on the left and a
small blue car at the bottom"). Both models are the same BERT (captioner config in
components.py); only the attention and the objective differ:

- `next_token`: causal attention, cross-entropy on the next word (GPT-style);
- `masked_diffusion`: full attention, LLaDA's objective (Nie et al., 2025, "Large Language
  Diffusion Models"): mask each caption position with probability t ~ U(0, 1], predict the
  masked words, weight the loss by 1/t. Its caption is padded with [EOS] to a fixed length,
  as LLaDA pads its answers, so it learns where a caption ends.

Every sequence has one layout, so positions mean the same thing in training and in use:
`[PAD]... [BOS] request [SEP] | caption [EOS] [EOS]...` with the request left-padded to
`prompt_length` and the caption region `gen_length` long. The saved folders load with
`AutoModelForCausalLM` / `AutoModelForMaskedLM` and `AutoTokenizer`; the masked-diffusion one
runs through diffusers' `LLaDA2Pipeline` with `BlockRefinementScheduler` (one block: the caption).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from .components import CaptionerConfig, build_captioner, build_word_tokenizer
from .scene import FUNCTION_WORDS, WORLD_WORDS, caption, parse_caption, random_scene
from .train import SUMMARY_FILE, train_alone

CAPTIONS_DIR = Path(__file__).parent / "captions"
LAYOUT_FILE = "caption_layout.json"  # the sequence layout both models were trained on
# Masked diffusion's default: the 30 caption positions unmasked two per pass, the surest first
# (a threshold of 1 commits by the schedule alone; lower, it commits every position surer than it).
UNMASK_STEPS = 15
UNMASK_THRESHOLD = 1.0
PROCESSES = ("next_token", "masked_diffusion")
# Ways a person might ask; the caption models must look through them to the scene.
REQUEST_OPENINGS = ("", "", "", "draw ", "show me ", "please draw ", "a picture of ", "an image of ", "make ",
                    "paint ", "i want ")


@dataclass
class CaptionTrainConfig:
    seed: int = 0
    batch_size: int = 64
    # 3,000 steps wrote the shapes world's captions perfectly; on the storybook world they left the
    # masked-diffusion writer binding colours to the wrong things (fidelity 0.33, next-token 0.85).
    # The 8,000-step writers met requests that name no background only in the evaluation of the demo's own
    # prompts ("a large red cat on the left"), and the masked-diffusion writer then wrote "in space snow"; the
    # shipped writers went on to 9,500 steps with such requests in the mix (unsaid_background).
    steps: int = 9500
    lr: float = 1e-3
    warmup_steps: int = 100
    empty_request: float = 0.1  # requests with no words: the model writes any scene (and can fill blanks unprompted)
    unsaid_background: float = 0.2  # requests that name no background: the caption names none either
    prompt_length: int = 48  # request tokens, [BOS] and [SEP] included
    checkpoint_every: int = 500
    eval_requests: int = 200
    model: CaptionerConfig = field(default_factory=CaptionerConfig)

    @classmethod
    def toy(cls) -> "CaptionTrainConfig":
        return cls(batch_size=4, steps=3, warmup_steps=1, checkpoint_every=2, eval_requests=4,
                   model=CaptionerConfig(hidden=16, layers=1, heads=2))


def request_pair(rng: random.Random, empty_request: float = 0.0, held_out: str = "exclude",
                 unsaid_background: float = 0.0) -> tuple[str, str]:
    """A (request, caption) pair of one random scene: the caption says the request's things in the world's
    own words and in the request's order (an empty request: in the order of the places).

    The order is the request's because a caption in a fixed order (by place) asks the writer to sort the
    request's things, and the masked-diffusion writer then bound colours and kinds to the wrong place:
    "a big white moon at the bottom, one big red fish in the center" became "a large red fish at the
    bottom and a large red fish in the center" (fidelity 0.345 in distribution, against 1.000 for the
    next-token writer of the same size, on the same batches)."""
    scene = random_scene(rng, held_out=held_out)
    if rng.random() < unsaid_background:
        scene = replace(scene, background=None)
    if rng.random() < empty_request:
        return "", caption(scene)
    order = list(scene.objects)
    rng.shuffle(order)
    return rng.choice(REQUEST_OPENINGS) + caption(scene, rng, order), caption(scene, order=order)


def build_tokenizer_for_world(seed: int):
    rng = random.Random(f"{seed}-caption-corpus")
    corpus = [caption(random_scene(rng, held_out="any"), rng) for _ in range(3000)]
    corpus += [" ".join(sorted(FUNCTION_WORDS | WORLD_WORDS)), " ".join(REQUEST_OPENINGS), ", . ! ?"]
    return build_word_tokenizer(corpus)


def caption_gen_length(seed: int) -> int:
    """Room for the longest canonical caption and its [EOS], measured on the world."""
    rng = random.Random(f"{seed}-caption-length")
    # The word-level tokenizer splits punctuation off: "center, on the sea" is five tokens.
    longest = max(len(caption(random_scene(rng, held_out="any")).replace(",", " ,").split()) for _ in range(5000))
    return longest + 1


def encode_requests(tokenizer, requests: list[str], prompt_length: int,
                    reader: str = "the caption models") -> tuple[torch.Tensor, torch.Tensor]:
    """`[PAD]... [BOS] request [SEP]`, left-padded to `prompt_length`; InputError if a request is too long."""
    ids = torch.full((len(requests), prompt_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, request in enumerate(requests):
        words = [tokenizer.bos_token_id] + tokenizer(request, add_special_tokens=False).input_ids + [tokenizer.sep_token_id]
        if len(words) > prompt_length:
            raise InputError(f"{reader} read at most {prompt_length - 2} words; the prompt has {len(words) - 2}")
        ids[row, prompt_length - len(words):] = torch.tensor(words)
        mask[row, prompt_length - len(words):] = 1
    return ids, mask


def encode_captions(tokenizer, captions: list[str], gen_length: int) -> torch.Tensor:
    """Each caption's words, then [EOS] to the end of the caption region."""
    ids = torch.full((len(captions), gen_length), tokenizer.eos_token_id, dtype=torch.long)
    for row, text in enumerate(captions):
        words = tokenizer(text, add_special_tokens=False).input_ids[: gen_length - 1]
        ids[row, : len(words)] = torch.tensor(words)
    return ids


def loss_next_token(model, ids, mask, prompt_length: int, eos_id: int) -> torch.Tensor:
    logits = model(ids, attention_mask=mask).logits
    targets = ids[:, 1:].clone()
    # Loss on the caption and its first [EOS]; the [EOS] padding after it is never read.
    caption = targets[:, prompt_length - 1:]
    after_eos = (caption == eos_id).long().cumsum(1) - (caption == eos_id).long() > 0
    caption[after_eos] = -100
    targets[:, : prompt_length - 1] = -100
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def loss_masked_diffusion(model, ids, mask, prompt_length: int, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    batch, total = ids.shape
    gen_length = total - prompt_length
    t = torch.rand(batch, 1, generator=generator).clamp(min=1e-3)
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, prompt_length:] = torch.rand(batch, gen_length, generator=generator) < t
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, attention_mask=mask).logits
    per_token = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    return ((per_token * masked) / t).sum() / (batch * gen_length)


def train_captioner(process: str, config: CaptionTrainConfig, tokenizer, gen_length: int, run_dir: Path):
    torch.manual_seed(config.seed)
    model = build_captioner(process, len(tokenizer), config.model, tokenizer.pad_token_id)

    def loss_fn(step):
        rng = random.Random(f"{config.seed}-captions-{step}")  # both processes see the same batches
        pairs = [request_pair(rng, config.empty_request, unsaid_background=config.unsaid_background)
                 for _ in range(config.batch_size)]
        prompt_ids, prompt_mask = encode_requests(tokenizer, [p for p, _ in pairs], config.prompt_length)
        caption_ids = encode_captions(tokenizer, [c for _, c in pairs], gen_length)
        ids = torch.cat([prompt_ids, caption_ids], 1)
        mask = torch.cat([prompt_mask, torch.ones_like(caption_ids)], 1)
        if process == "next_token":
            return loss_next_token(model, ids, mask, config.prompt_length, tokenizer.eos_token_id)
        return loss_masked_diffusion(model, ids, mask, config.prompt_length, tokenizer.mask_token_id,
                                     torch.Generator().manual_seed(step))

    seconds = train_alone(f"captions_{process}", model, run_dir, config.steps, config.checkpoint_every, config.lr,
                          config.warmup_steps, loss_fn)
    return model.eval(), seconds


@torch.no_grad()
def write_captions(process: str, model, tokenizer, requests: list[str], prompt_length: int, gen_length: int,
                   steps: int = UNMASK_STEPS, threshold: float = UNMASK_THRESHOLD) -> tuple[list[str], int]:
    """Greedy captions through the libraries' own generation: `generate` for next-token,
    `LLaDA2Pipeline` for masked diffusion. Returns the captions and the forward passes run."""
    ids, mask = encode_requests(tokenizer, requests, prompt_length)
    if process == "next_token":
        # Positions as in training (absolute in the fixed layout); generate's default counts from the first word.
        positions = torch.arange(prompt_length).expand(len(requests), -1)
        out = model.generate(ids, attention_mask=mask, position_ids=positions, max_new_tokens=gen_length, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = out[:, prompt_length:]
        return tokenizer.batch_decode(new, skip_special_tokens=True), new.shape[1]
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    passes = []
    pipe = LLaDA2Pipeline(model=model, scheduler=BlockRefinementScheduler(block_length=gen_length), tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=ids, attention_mask=mask, gen_length=gen_length, block_length=gen_length,
               num_inference_steps=steps, sampling_method="greedy", threshold=threshold,
               editing_threshold=None, callback_on_step_end=lambda p, i, t, kw: passes.append(i) or {})
    return out.texts, len(passes)


def evaluate_captioner(process: str, model, tokenizer, prompt_length: int, gen_length: int, count: int,
                       seed: int = 1234, unsaid_background: float = CaptionTrainConfig.unsaid_background) -> dict:
    """Validity (the caption parses back to a scene) and fidelity (it is the scene asked for)."""
    report = {}
    for name, held_out in (("in_distribution", "exclude"), ("held_out", "only")):
        rng = random.Random(f"eval-captions-{name}-{seed}")
        pairs = [request_pair(rng, held_out=held_out, unsaid_background=unsaid_background) for _ in range(count)]
        started = time.perf_counter()
        texts, passes = [], 0
        for start in range(0, count, 50):
            chunk, n = write_captions(process, model, tokenizer, [p for p, _ in pairs[start:start + 50]],
                                      prompt_length, gen_length)
            texts += chunk
            passes = max(passes, n)
        seconds = time.perf_counter() - started
        scenes = [parse_caption(t) for t in texts]
        report[name] = {
            "requests": count,
            "validity": sum(s is not None for s in scenes) / count,
            "fidelity": sum(s == parse_caption(c) for s, (_, c) in zip(scenes, pairs)) / count,
            "forward_passes_per_batch": passes,
            "seconds_per_caption": round(seconds / count, 4),
            "examples": [{"request": p, "caption": t} for (p, _), t in list(zip(pairs, texts))[:3]],
        }
    return report


def train_captions(config: CaptionTrainConfig, out: Path = CAPTIONS_DIR, run_dir: Path = Path("runs/captions")) -> dict:
    """Train both processes on the same batches; save `out/<process>/` (model + tokenizer)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    tokenizer = build_tokenizer_for_world(config.seed)
    gen_length = caption_gen_length(config.seed)
    summary = {"train_config": asdict(config), "gen_length": gen_length, "vocabulary": len(tokenizer)}
    for process in PROCESSES:
        model, seconds = train_captioner(process, config, tokenizer, gen_length, run_dir)
        folder = out / process
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        layout = {"process": process, "prompt_length": config.prompt_length, "gen_length": gen_length}
        (folder / LAYOUT_FILE).write_text(json.dumps(layout, indent=2))
        summary[process] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1),
            "evaluation": evaluate_captioner(process, model, tokenizer, config.prompt_length, gen_length,
                                             config.eval_requests),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
