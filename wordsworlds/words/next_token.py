"""The words engine: a causal LM that writes one token at a time and shows its odds.

For every generated token it reports the token's probability and the top-k candidates it
beat. Greedy or sampled (temperature, top-k, top-p, seed), with the chat template for
instruct models, a server-side cap on new tokens, and cancellation between tokens.

    >>> from wordsworlds.presets import get_preset
    >>> from wordsworlds.words.next_token import TextGenerator
    >>> generator = TextGenerator.load(get_preset("tiny"))   # the preset's LLM
    >>> for step in generator.stream("Name a colour.", max_new_tokens=5):
    ...     print(step.text, round(step.prob, 2), step.top[:2])   # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError, check_number, check_prompt, check_seed
from ..models import LLM, Report, load_llm
from ..presets import Preset
from ..serving import InLine
from .batching import TokenJob, TokenLoop

MAX_NEW_TOKENS_CAP = 256  # the server's cap, whatever the caller asks
MAX_TOP_N = 20


@dataclass
class DecodingOptions:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    top_n: int = 5  # how many candidates to show per token
    chat: bool = True  # wrap the prompt in the model's chat template

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def validate_options(
    max_new_tokens=48, temperature=0.0, top_k=0, top_p=1.0, seed=None, top_n=5, chat=True
) -> DecodingOptions:
    """Check every decoding option; raise InputError with a message a person can act on."""
    max_new_tokens = check_number("max_new_tokens", max_new_tokens, int, 1, MAX_NEW_TOKENS_CAP)
    temperature = check_number("temperature", temperature, float, 0, 5)  # 0: greedy
    top_k = check_number("top_k", top_k, int, 0)  # 0: off
    top_p = check_number("top_p", top_p, float, 0, 1)
    if top_p == 0:
        raise InputError("top_p must be above 0 (1 keeps every token)")
    seed = check_seed(seed, optional=True)
    top_n = check_number("top_n", top_n, int, 1, MAX_TOP_N)
    return DecodingOptions(max_new_tokens, temperature, top_k, top_p, seed, top_n, bool(chat))


@dataclass
class TokenStep:
    index: int
    token_id: int
    text: str  # the text this token completed: "" while a character spanning several tokens is unfinished
    prob: float  # the model's probability for it (temperature 1, before any filtering)
    top: list[tuple[str, float]]  # the top-n candidates at this step, best first
    elapsed_s: float  # since the call started
    end: bool = False  # the model's end-of-turn token


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    forward_passes: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    stopped_by: str = ""  # "" while running, then "eos", "max_new_tokens" or "cancelled"
    batch_size: int = 0  # the most requests one of this run's forward passes served (1: alone)

    @property
    def tokens_per_s(self) -> float:
        decode_time = self.total_s - self.time_to_first_token_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 2)}


@dataclass
class TextResult:
    text: str
    steps: list[TokenStep] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def to_dict(self) -> dict:
        return {"text": self.text, "stats": self.stats.to_dict(), "tokens": [asdict(s) for s in self.steps]}


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask what top-k and top-p (nucleus, Holtzman et al. 2019) rule out."""
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


class _Sequence:
    """One request's decoding: sampling with its own settings and seed, the text so far, the stop
    rule. The same for a request decoded alone and one decoded in a batch (words/batching.py)."""

    def __init__(self, engine: "TextGenerator", options: DecodingOptions, stats: GenerationStats, started: float):
        self.engine, self.options, self.stats, self.started = engine, options, stats, started
        self.random = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        self.generated: list[int] = []
        self.text_so_far = ""

    def take(self, logits: torch.Tensor, batch_size: int = 1) -> tuple[TokenStep, bool]:
        """The next token from this sequence's logits: (its TokenStep, whether the sequence ended)."""
        options, stats, index = self.options, self.stats, len(self.generated)
        logits = logits.float().cpu()
        probs = logits.softmax(-1)
        if options.greedy:
            token = int(torch.argmax(logits))
        else:
            filtered = filter_logits(logits / options.temperature, options.top_k, options.top_p)
            token = int(torch.multinomial(filtered.softmax(-1), 1, generator=self.random))
        top = torch.topk(probs, options.top_n)
        self.generated.append(token)
        end = token in self.engine.stop_ids
        last = end or index + 1 == options.max_new_tokens
        # Decode the whole sequence so far, never token by token: a character can span several
        # byte-level tokens. A trailing "\ufffd" is a character still incomplete; it is held back
        # until its last byte arrives (or the run ends), so no token ever shows half a character.
        text = self.engine.tokenizer.decode(self.generated, skip_special_tokens=True)
        stable = text if last else text.rstrip("\ufffd")
        piece, self.text_so_far = stable[len(self.text_so_far):], stable
        now = time.perf_counter() - self.started
        if index == 0:
            stats.time_to_first_token_s = now
        stats.new_tokens, stats.total_s, stats.forward_passes = index + 1, now, stats.forward_passes + 1
        stats.batch_size = max(stats.batch_size, batch_size)
        if last:
            stats.stopped_by = "eos" if end else "max_new_tokens"
        step = TokenStep(
            index=index, token_id=token, text=piece, prob=float(probs[token]),
            top=[(self.engine.token_label(int(i)), float(p)) for p, i in zip(top.values, top.indices)],
            elapsed_s=now, end=end,
        )
        return step, last

    def cancel(self) -> None:
        self.stats.stopped_by = "cancelled"
        self.stats.total_s = time.perf_counter() - self.started


class TextGenerator:
    """Token-by-token generation with a KV cache, one forward pass per new token.

    With `batching` (the app's default), every request is served by the model's one TokenLoop,
    which decodes all active requests in one forward pass per step (words/batching.py); without
    it (the baseline, and ZeroGPU where each call runs in a process of its own), each request
    runs its own loop. Both give the same tokens and probabilities."""

    def __init__(self, model, tokenizer, report: Report | None = None, batching: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.report = report  # what runs (models.Report)
        self.stop_ids = {self.tokenizer.eos_token_id} | set(self._extra_stop_ids())
        self.loop = _token_loop(self) if batching else None

    @property
    def running(self) -> int:
        """Requests the model's loop is stepping now (0 without batching)."""
        return self.loop.load[0] if self.loop is not None else 0

    @classmethod
    def load(cls, preset: Preset) -> "TextGenerator":
        """The preset's LLM (loaded once per process, models.load_llm), batched unless the preset says not."""
        llm: LLM = load_llm(preset)
        return cls(llm.model, llm.tokenizer, llm.report, batching=preset.batched)

    def encode_prompt(self, prompt: str, chat: bool) -> torch.Tensor:
        if chat and self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        return ids.to(self.model.device)

    def chat_head(self) -> list[int]:
        """The tokens every chat prompt starts with (the template's system turn and the user marker):
        their keys and values are computed once and shared (words/batching.py)."""
        if not self.tokenizer.chat_template:
            return []
        a, b = (self.encode_prompt(text, chat=True)[0].tolist() for text in ("A", "7"))
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:max(0, shared - 1)]  # one token short: the last shared one may belong to the message

    def stream(
        self, prompt: str, options: DecodingOptions | None = None, should_stop: Callable[[], bool] | None = None,
        stats: GenerationStats | None = None, line_updates: bool = False, **option_kwargs,
    ) -> Iterator[TokenStep | InLine]:
        """Yield one TokenStep per generated token. Pass `stats` to read timing afterwards. With
        `line_updates`, InLine items say the request's place while it waits for the batch."""
        prompt = check_prompt(prompt)
        options = options or validate_options(**option_kwargs)
        stats = stats if stats is not None else GenerationStats()
        sequence = _Sequence(self, options, stats, time.perf_counter())
        ids = self.encode_prompt(prompt, options.chat)
        stats.prompt_tokens = ids.shape[1]
        if self.loop is not None:
            job = TokenJob(ids, sequence.take, should_stop, sequence.cancel)
            yield from self.loop.stream(job, line_updates)
        else:
            yield from self._stream_alone(ids, sequence, should_stop)
        stats.total_s = time.perf_counter() - sequence.started

    @torch.inference_mode()
    def _stream_alone(self, ids: torch.Tensor, sequence: _Sequence, should_stop) -> Iterator[TokenStep]:
        """The request on its own: one forward pass for the prompt, then one per token."""
        output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        while True:
            step, last = sequence.take(output.logits[0, -1])
            yield step
            if last:
                return
            if should_stop is not None and should_stop():
                sequence.cancel()
                return
            output = self.model(
                input_ids=torch.tensor([[step.token_id]], device=self.model.device),
                past_key_values=output.past_key_values, use_cache=True,
            )

    def token_label(self, token_id: int) -> str:
        """How a candidate token reads on its own: its text, or, for a byte-level token that is only
        part of a character (an emoji, an accented letter), a label saying so instead of "\ufffd"."""
        text = self.tokenizer.decode([token_id])
        return f"⟨part of a character, token {token_id}⟩" if "\ufffd" in text else text

    def generate(self, prompt: str, **options) -> TextResult:
        stats = GenerationStats()
        steps = list(self.stream(prompt, stats=stats, **options))
        return TextResult(text="".join(s.text for s in steps), steps=steps, stats=stats)

    def _extra_stop_ids(self) -> list[int]:
        # Chat models end a turn with their own marker (SmolLM2: <|im_end|>).
        ids = []
        for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.append(token_id)
        return ids


_LOOPS: dict[int, TokenLoop] = {}
_LOOPS_LOCK = threading.Lock()


def _token_loop(engine: TextGenerator) -> TokenLoop:
    """The model's one TokenLoop (a worker thread), made by the first engine that asks."""
    with _LOOPS_LOCK:
        if id(engine.model) not in _LOOPS:
            _LOOPS[id(engine.model)] = TokenLoop(engine.model, engine.chat_head())
        return _LOOPS[id(engine.model)]
