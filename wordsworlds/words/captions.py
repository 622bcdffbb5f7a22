"""The two caption writers of the two-by-two, one step (one forward pass) at a time.

Both read the prompt and write the scene's caption in the world's words; they are the same
BERT, trained on the same batches with the same tokenizer (world/train_captions.py), and
differ only in their process:

- `next_token`: left to right, one word per forward pass, each word final once written;
- `masked_diffusion`: every position starts masked; each pass predicts all of them and
  commits the most confident (diffusers' `BlockRefinementScheduler`, the scheduler of
  `LLaDA2Pipeline`; the caption is one block).

Each step is a `CaptionFrame`: every caption position's word (None while masked or not yet
written), its probability when committed, the positions committed at this step, passes and
time. `blanks` (e.g. "a ___ red ___ on the left") asks for a caption with those words fixed
and each `___` one word to fill: the masked-diffusion model fills them in place, the
next-token model can only continue from the words before the first blank.

    >>> from wordsworlds.presets import get_preset
    >>> from wordsworlds.words.captions import Captioner
    >>> writer = Captioner.load(get_preset("tiny"), "masked_diffusion")
    >>> frame = None
    >>> for frame in writer.stream("draw a big red kitten at the left"):
    ...     pass
    >>> frame.caption
    'a large red cat on the left'
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import BlockRefinementScheduler

from ..errors import InputError, check_number, check_prompt
from ..models import load_caption_model
from ..presets import Preset
from ..serving import RunJob, RunLoop, run_loop
from ..world.train_captions import (
    CAPTIONS_DIR, LAYOUT_FILE, PROCESSES, UNMASK_STEPS, UNMASK_THRESHOLD, encode_requests,
)

BLANK = re.compile(r"^_{2,}$")  # "___" (two or more underscores) is one word to fill
CANDIDATES = 4  # the words kept per position, for a branch (pick another and continue)


@dataclass
class CaptionFrame:
    process: str
    step: int  # forward passes so far
    words: list[str | None]  # one per caption position; None: still masked (or not yet written)
    probabilities: list[float | None]
    committed: list[int] = field(default_factory=list)  # positions committed by this pass
    fixed: list[bool] = field(default_factory=list)  # given by the blanks template, never written by the model
    seconds: float = 0.0
    done: bool = False
    passes: list[int | None] = field(default_factory=list)  # per position, the pass that committed it (a replay's order)
    # per position, the words the model weighed when it committed it, surest first: (word, probability)
    candidates: list[list[tuple[str, float]]] = field(default_factory=list)

    @property
    def caption(self) -> str:
        """The words up to the caption's end ([EOS]); masked positions shown as ___."""
        out = []
        for word in self.words:
            if word == END:
                break
            out.append("___" if word is None else word)
        return " ".join(out).replace(" ,", ",").strip()  # as the tokenizer decodes: "right, on the sea"


END = "[EOS]"


class Captioner:
    """One trained caption model and its process; batched, one RunLoop per model serves every request."""

    def __init__(self, model, tokenizer, process: str, prompt_length: int, gen_length: int, report=None,
                 batching: bool = False):
        if process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
        self.model, self.tokenizer, self.process = model.eval(), tokenizer, process
        self.prompt_length, self.gen_length, self.report = prompt_length, gen_length, report
        self.loop = _run_loop(self) if batching else None  # serving.RunLoop: every request's pass in one forward

    @classmethod
    def load(cls, preset: Preset, process: str) -> "Captioner":
        """The preset's caption writer of `process` (loaded once per process), batched unless the preset says not."""
        parts = load_caption_model(preset, process)
        return cls(parts.model, parts.tokenizer, process, parts.prompt_length, parts.gen_length, parts.report,
                   batching=preset.batched)

    @classmethod
    def from_pretrained(cls, folder: str | Path, process: str) -> "Captioner":
        """A caption writer from a folder that train_captions wrote (`folder/<process>`), alone."""
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        path = Path(folder) / process
        layout = json.loads((path / LAYOUT_FILE).read_text())
        auto = AutoModelForCausalLM if process == "next_token" else AutoModelForMaskedLM
        return cls(auto.from_pretrained(path), AutoTokenizer.from_pretrained(path), process,
                   layout["prompt_length"], layout["gen_length"])

    @property
    def running(self) -> int:
        """Requests the model's loop is stepping now (0 without batching)."""
        return self.loop.load[0] if self.loop is not None else 0

    # ------------------------------------------------------------ input

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`[PAD]... [BOS] prompt [SEP]`, as in training; a prompt too long for the layout is refused."""
        return encode_requests(self.tokenizer, [prompt], self.prompt_length, "the caption models")

    def parse_blanks(self, blanks: str) -> list[int | None]:
        """The template's word ids, None for each blank; a clear message for anything malformed."""
        if not isinstance(blanks, str):
            raise InputError(f"blanks must be text, got {type(blanks).__name__}")
        words = blanks.replace(",", " , ").split()  # a comma is a word of the captions ("right, on the sea")
        if not words:
            raise InputError('blanks is empty; write a caption with ___ for each missing word, e.g. "a ___ red ___ on the left"')
        odd = [w for w in words if "_" in w and not BLANK.match(w)]
        if odd:
            raise InputError(f"{odd[0]!r} is not a blank: a blank is ___ on its own, one per missing word")
        if not any(BLANK.match(w) for w in words):
            raise InputError('no blank to fill: mark each missing word with ___, e.g. "a ___ red ___ on the left"')
        if len(words) > self.gen_length - 1:
            raise InputError(f"the template has {len(words)} words; a caption holds at most {self.gen_length - 1}")
        vocabulary = self.tokenizer.get_vocab()
        unknown = [w for w in words if not BLANK.match(w) and w.lower() not in vocabulary]
        if unknown:
            raise InputError(f"the caption models do not know {', '.join(map(repr, unknown[:4]))}; "
                             "use the storybook world's words (things, colours, sizes, places, skies and grounds)")
        return [None if BLANK.match(w) else vocabulary[w.lower()] for w in words]

    # ------------------------------------------------------------ the two processes

    def start(self, prompt: str = "", blanks: str | None = None, num_inference_steps: int = UNMASK_STEPS,
              threshold: float = UNMASK_THRESHOLD) -> "CaptionRun":
        """One request's run, checked before any model work. An empty prompt asks for any caption
        (both models were trained with 10% empty requests)."""
        if prompt:
            prompt = check_prompt(prompt)
        steps = check_number("num_inference_steps", num_inference_steps, int, 1, self.gen_length)
        threshold = check_number("threshold", threshold, float, 0, 1)
        template = self.parse_blanks(blanks) if blanks is not None else None
        ids, mask = self.encode_prompt(prompt)
        kind = NextTokenRun if self.process == "next_token" else MaskedDiffusionRun
        return kind(self, ids[0], mask[0], template, steps, threshold)

    @torch.no_grad()
    def forward(self, runs: list["CaptionRun"]) -> torch.Tensor:
        """One forward pass for every run (batched): logits [runs, prompt + caption length, vocabulary].
        Every run has the same layout, so a batch needs no padding, and no key/value cache: at 72
        positions and 0.8M parameters the whole sequence costs about as much as one position."""
        ids = torch.stack([run.ids for run in runs])
        attention = torch.stack([run.attention for run in runs])
        positions = torch.arange(ids.shape[1])[None].expand(len(runs), -1)
        return self.model(ids, attention_mask=attention, position_ids=positions).logits

    def stream(self, prompt: str = "", blanks: str | None = None, num_inference_steps: int = UNMASK_STEPS,
               threshold: float = UNMASK_THRESHOLD, should_stop: Callable[[], bool] = lambda: False,
               line_updates: bool = False, skip_stale: bool = False) -> Iterator[CaptionFrame]:
        """Yield a frame after every forward pass; the last has `done=True`. Batched: with `line_updates`,
        InLine items while waiting for a place; with `skip_stale`, frames the reader is too slow for are
        skipped (a live view)."""
        run = self.start(prompt, blanks, num_inference_steps, threshold)
        if self.loop is not None:
            yield from self.loop.stream(RunJob(run, should_stop), line_updates=line_updates, skip_stale=skip_stale)
            return
        while not run.done and not should_stop():
            yield run.advance(self.forward([run])[0])

    def write(self, prompt: str = "", blanks: str | None = None, num_inference_steps: int = UNMASK_STEPS,
              threshold: float = UNMASK_THRESHOLD) -> CaptionFrame:
        frame = None
        for frame in self.stream(prompt, blanks, num_inference_steps, threshold):
            pass
        return frame

    def word(self, token_id: int) -> str:
        return END if token_id == self.tokenizer.eos_token_id else self.tokenizer.convert_ids_to_tokens(token_id)


def _run_loop(engine: Captioner) -> RunLoop:
    return run_loop(engine, f"{engine.process.replace('_', '-')} caption")


class CaptionRun:
    """One request: its whole sequence (prompt, then the caption region) and what is committed."""

    def __init__(self, writer: Captioner, prompt_ids, prompt_mask, template, steps: int, threshold: float):
        self.writer, self.steps, self.threshold = writer, steps, threshold
        self.started = time.perf_counter()
        self.step, self.done = 0, False
        tok, length = writer.tokenizer, writer.gen_length
        self.region = self.first_region(template)
        self.fixed = [t is not None for t in self.region]
        self.words = [None if t is None else writer.word(t) for t in self.region]
        self.probabilities: list[float | None] = [None] * length
        self.passes: list[int | None] = [None] * length
        self.candidates: list[list[tuple[str, float]]] = [[] for _ in range(length)]
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.pad = tok.pad_token_id

    def first_region(self, template) -> list[int | None]:
        raise NotImplementedError

    def frame(self, committed: list[int]) -> CaptionFrame:
        return CaptionFrame(self.writer.process, self.step, list(self.words), list(self.probabilities), committed,
                            list(self.fixed), time.perf_counter() - self.started, self.done, list(self.passes),
                            [list(c) for c in self.candidates])

    def commit(self, position: int, token: int, probability: float, probs: torch.Tensor) -> None:
        """Write `token` at `position` at this pass, with the words it was chosen among."""
        self.region[position] = token
        self.words[position], self.probabilities[position] = self.writer.word(token), probability
        self.passes[position] = self.step + 1
        top = probs.topk(min(CANDIDATES, len(probs)))
        self.candidates[position] = [(self.writer.word(int(i)), round(float(p), 4))
                                     for p, i in zip(top.values, top.indices)]


class NextTokenRun(CaptionRun):
    """Left to right, one word per pass, greedy; each word final once written. Given blanks, it gets the
    words before the first blank (its prompt, in effect) and continues: it cannot look ahead."""

    def first_region(self, template):
        prefix = template[: template.index(None)] if template is not None else []
        return prefix + [None] * (self.writer.gen_length - len(prefix))

    @property
    def written(self) -> int:
        return sum(w is not None for w in self.words)

    @property
    def ids(self) -> torch.Tensor:
        # Not yet written: padding, masked out (and, with causal attention, never seen by written positions).
        region = torch.tensor([self.pad if t is None else t for t in self.region])
        return torch.cat([self.prompt_ids, region])

    @property
    def attention(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, torch.tensor([int(t is not None) for t in self.region])])

    def advance(self, logits: torch.Tensor) -> CaptionFrame:
        position = self.written
        probs = logits[self.writer.prompt_length + position - 1].float().softmax(-1)
        token = int(probs.argmax())
        self.commit(position, token, float(probs[token]), probs)
        self.step += 1
        self.done = token == self.writer.tokenizer.eos_token_id or position == self.writer.gen_length - 1
        return self.frame([position])


class MaskedDiffusionRun(CaptionRun):
    """Every position masked (or fixed by the template); each pass predicts all and commits the surest,
    with diffusers' BlockRefinementScheduler: LLaDA2Pipeline's loop for one block, run here to stream
    each pass, to start from a template and to batch requests (test_two_by_two checks it writes what
    the pipeline writes)."""

    def first_region(self, template):
        tok = self.writer.tokenizer
        if template is None:
            return [None] * self.writer.gen_length
        # The template's words, then [EOS]: the caption ends where the template ends.
        return template + [tok.eos_token_id] * (self.writer.gen_length - len(template))

    def __init__(self, *args):
        super().__init__(*args)
        self.scheduler = BlockRefinementScheduler(block_length=self.writer.gen_length)
        self.scheduler.set_timesteps(self.steps, block_length=self.writer.gen_length)

    @property
    def block(self) -> torch.Tensor:
        mask_id = self.writer.tokenizer.mask_token_id
        return torch.tensor([mask_id if t is None else t for t in self.region])

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.block])

    @property
    def attention(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, torch.ones(self.writer.gen_length, dtype=torch.long)])

    def advance(self, logits: torch.Tensor) -> CaptionFrame:
        tok = self.writer.tokenizer
        out = self.scheduler.step(model_output=logits[None, self.writer.prompt_length:], timestep=self.step,
                                  sample=self.block[None], mask_token_id=tok.mask_token_id, sampling_method="greedy",
                                  threshold=self.threshold, editing_threshold=None,
                                  prompt_mask=torch.tensor(self.fixed))
        committed = out.transfer_index[0].nonzero().flatten().tolist()
        probs = logits[self.writer.prompt_length:].float().softmax(-1)
        for position in committed:
            token = int(out.prev_sample[0, position])
            self.commit(position, token, float(out.sampled_probs[0, position]), probs[position])
        self.step += 1
        self.done = all(t is not None for t in self.region)
        return self.frame(committed)
