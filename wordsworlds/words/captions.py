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

    >>> from wordsworlds.words.captions import Captioner
    >>> writer = Captioner.load("masked_diffusion")
    >>> frame = None
    >>> for frame in writer.stream("draw a big red disc at the left"):
    ...     pass
    >>> frame.caption
    'a large red circle on the left'
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
from ..world.train_captions import (
    CAPTIONS_DIR, LAYOUT_FILE, PROCESSES, UNMASK_STEPS, UNMASK_THRESHOLD, encode_requests,
)

BLANK = re.compile(r"^_{2,}$")  # "___" (two or more underscores) is one word to fill


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

    @property
    def caption(self) -> str:
        """The words up to the caption's end ([EOS]); masked positions shown as ___."""
        out = []
        for word in self.words:
            if word == END:
                break
            out.append("___" if word is None else word)
        return " ".join(out).strip()


END = "[EOS]"


class Captioner:
    """One trained caption model and its process."""

    def __init__(self, model, tokenizer, process: str, prompt_length: int, gen_length: int):
        if process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
        self.model, self.tokenizer, self.process = model.eval(), tokenizer, process
        self.prompt_length, self.gen_length = prompt_length, gen_length

    @classmethod
    def load(cls, process: str, folder: str | Path = CAPTIONS_DIR) -> "Captioner":
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        path = Path(folder) / process
        layout = json.loads((path / LAYOUT_FILE).read_text())
        auto = AutoModelForCausalLM if process == "next_token" else AutoModelForMaskedLM
        return cls(auto.from_pretrained(path), AutoTokenizer.from_pretrained(path), process,
                   layout["prompt_length"], layout["gen_length"])

    # ------------------------------------------------------------ input

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`[PAD]... [BOS] prompt [SEP]`, as in training; a prompt too long for the layout is refused."""
        return encode_requests(self.tokenizer, [prompt], self.prompt_length, "the caption models")

    def parse_blanks(self, blanks: str) -> list[int | None]:
        """The template's word ids, None for each blank; a clear message for anything malformed."""
        if not isinstance(blanks, str):
            raise InputError(f"blanks must be text, got {type(blanks).__name__}")
        words = blanks.split()
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
                             "use the shapes world's words (shapes, colours, sizes, places)")
        return [None if BLANK.match(w) else vocabulary[w.lower()] for w in words]

    # ------------------------------------------------------------ the two processes

    def stream(self, prompt: str = "", blanks: str | None = None, num_inference_steps: int = UNMASK_STEPS,
               threshold: float = UNMASK_THRESHOLD,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[CaptionFrame]:
        """Yield a frame after every forward pass; the last has `done=True`. An empty prompt asks
        for any caption (both models were trained with 10% empty requests)."""
        if prompt:
            prompt = check_prompt(prompt)
        steps = check_number("num_inference_steps", num_inference_steps, int, 1, self.gen_length)
        threshold = check_number("threshold", threshold, float, 0, 1)
        template = self.parse_blanks(blanks) if blanks is not None else None
        ids, mask = self.encode_prompt(prompt)
        if self.process == "next_token":
            yield from self._next_token(ids, mask, template, should_stop)
        else:
            yield from self._masked_diffusion(ids, mask, template, steps, threshold, should_stop)

    def write(self, prompt: str = "", blanks: str | None = None, num_inference_steps: int = UNMASK_STEPS,
              threshold: float = UNMASK_THRESHOLD) -> CaptionFrame:
        frame = None
        for frame in self.stream(prompt, blanks, num_inference_steps, threshold):
            pass
        return frame

    def _word(self, token_id: int) -> str:
        return END if token_id == self.tokenizer.eos_token_id else self.tokenizer.convert_ids_to_tokens(token_id)

    @torch.no_grad()
    def _next_token(self, ids, mask, template, should_stop) -> Iterator[CaptionFrame]:
        """Greedy, one word per pass, with the key-value cache. Given blanks, it is given the words
        before the first blank (its prompt, in effect) and continues: it cannot look ahead."""
        started = time.perf_counter()
        prefix = []
        if template is not None:
            prefix = template[: template.index(None)]
        words: list[str | None] = [self._word(t) for t in prefix] + [None] * (self.gen_length - len(prefix))
        probabilities: list[float | None] = [None] * self.gen_length
        fixed = [i < len(prefix) for i in range(self.gen_length)]
        inputs = torch.cat([ids, torch.tensor([prefix], dtype=torch.long)], 1)
        attention = torch.cat([mask, torch.ones(1, len(prefix), dtype=torch.long)], 1)
        positions = torch.arange(inputs.shape[1])[None]
        cache, step = None, 0
        for position in range(len(prefix), self.gen_length):
            if should_stop():
                return
            out = self.model(inputs, attention_mask=attention, position_ids=positions, past_key_values=cache,
                             use_cache=True)
            cache, step = out.past_key_values, step + 1
            probs = out.logits[0, -1].float().softmax(-1)
            token = int(probs.argmax())
            words[position], probabilities[position] = self._word(token), float(probs[token])
            end = token == self.tokenizer.eos_token_id or position == self.gen_length - 1
            yield CaptionFrame(self.process, step, list(words), list(probabilities), [position], fixed,
                               time.perf_counter() - started, done=end)
            if end:
                return
            inputs = torch.tensor([[token]])
            attention = torch.cat([attention, torch.ones(1, 1, dtype=torch.long)], 1)
            positions = positions[:, -1:] + 1

    @torch.no_grad()
    def _masked_diffusion(self, ids, mask, template, steps, threshold, should_stop) -> Iterator[CaptionFrame]:
        """All positions masked (or fixed by the template); each pass commits the most confident.
        The loop is LLaDA2Pipeline's for one block, run here to stream each pass and to start
        from a template; test_captions checks it writes what the pipeline writes."""
        started = time.perf_counter()
        tok = self.tokenizer
        if template is None:
            region = [tok.mask_token_id] * self.gen_length
        else:  # the template's words, then [EOS]: the caption ends where the template ends
            region = [tok.mask_token_id if t is None else t for t in template]
            region += [tok.eos_token_id] * (self.gen_length - len(region))
        fixed = [t != tok.mask_token_id for t in region]
        x = torch.cat([ids, torch.tensor([region], dtype=torch.long)], 1)
        attention = torch.cat([mask, torch.ones(1, self.gen_length, dtype=torch.long)], 1)
        positions = torch.arange(x.shape[1])[None]
        scheduler = BlockRefinementScheduler(block_length=self.gen_length)
        scheduler.set_timesteps(steps, block_length=self.gen_length)
        words = [None if t == tok.mask_token_id else self._word(t) for t in region]
        probabilities: list[float | None] = [None] * self.gen_length
        step = 0
        while (x[0, self.prompt_length:] == tok.mask_token_id).any():
            if should_stop():
                return
            logits = self.model(x, attention_mask=attention, position_ids=positions).logits
            block = x[:, self.prompt_length:]
            out = scheduler.step(model_output=logits[:, self.prompt_length:], timestep=step, sample=block,
                                 mask_token_id=tok.mask_token_id, sampling_method="greedy", threshold=threshold,
                                 editing_threshold=None, prompt_mask=torch.tensor(fixed))
            x[:, self.prompt_length:] = out.prev_sample
            step += 1
            committed = out.transfer_index[0].nonzero().flatten().tolist()
            for position in committed:
                words[position] = self._word(int(out.prev_sample[0, position]))
                probabilities[position] = float(out.sampled_probs[0, position])
            done = not (x[0, self.prompt_length:] == tok.mask_token_id).any()
            yield CaptionFrame(self.process, step, list(words), list(probabilities), committed, fixed,
                               time.perf_counter() - started, done=done)
