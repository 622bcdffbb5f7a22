"""Continuous batching for the words engine: every active request's next token from one forward pass.

Newcomers are prefilled together (their prompts through the model in one forward pass,
left-padded, after the cached keys and values of the chat template's fixed head, which every
prompt shares), which gives each its first token at once: a room pressing Run together sees
its first tokens after a pass or two, not after fifty. A pass takes up to `PREFILL_TOKENS` prompt
tokens; while more newcomers wait, the iteration ends after their prefill (the decoding rows wait
one iteration), so the cores pass to the worlds loop between two prefills and a room's first
pictures need not wait for every prompt. They then join the batch: one key/value cache for all active
sequences, left-padded to a common length, with an attention mask over the padding and each
row's own positions. Each step feeds every row its latest token, and each request samples
its next one from its own row of logits, with its own settings and seed (`TokenJob.take`),
so what a request writes does not depend on who else is in the batch. Finished or cancelled
rows leave the cache between steps.

Why not transformers' `ContinuousBatchingManager`: it gives each token's log-probability but
not the top-n candidates the tab shows, samples all requests with one generation config and
the global random generator (a seeded request would then depend on its neighbours), and runs
paged attention built for GPUs. Why not llama.cpp's server: its candidate probabilities are
of its own quantized kernels, and the explorer needs this model's hidden states anyway
(benchmarks/bench_text.py compares the two on one stream).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..serving import CAPACITY, MAX_BATCH, Request, StepLoop

# Prompt tokens prefilled together per iteration (a very long prompt cannot stall everyone's decoding for
# long). Fifty "Run both" at once (benchmarks/bench_room.py, README): with 2,048 the 49 prompts after the
# first took one 1.7 s pass, and the pictures waited for it (first shown p95 1.9-2.2 s); with 1,024, and
# the decoding rows waiting while newcomers do, 1.2-1.9 s, words alone about the same (1.7-2.0 s).
PREFILL_TOKENS = 1024


@dataclass(eq=False)
class TokenJob:
    """What the loop needs of one request; the words engine (next_token.py) makes it."""

    input_ids: torch.Tensor  # (1, n) the prompt's tokens
    take: Callable[[torch.Tensor, int], tuple[object, bool]]  # (logits row, batch size) -> (its step, with .token_id; finished?)
    should_stop: Callable[[], bool] | None = None  # checked before every step, besides the reader leaving
    on_cancel: Callable[[], None] | None = None  # told when the request leaves the batch unfinished


@dataclass(eq=False)
class _Row:
    length: int  # real tokens in the cache
    next_token: int  # fed at the next step


class TokenLoop(StepLoop):
    """One worker thread per causal LM, stepping every active sequence together."""

    def __init__(self, model, prefix_ids: list[int] | None = None, max_batch: int = MAX_BATCH,
                 capacity: int = CAPACITY):
        self.model = model
        self.prefix_ids = prefix_ids or []
        self._prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the shared head's keys and values
        self._cache: DynamicCache | None = None  # the batch's cache, one row per entry of self._rows
        self._mask: torch.Tensor | None = None  # (rows, cache length): 1 real, 0 padding
        self._rows: list[Request] = []
        self._joining: list[Request] = []  # prefilled, waiting to enter the cache
        super().__init__("words", max_batch=max_batch, capacity=capacity)

    # ----------------------------------------------------------------- joining

    def start(self, request: Request) -> None:
        self._joining.append(request)  # prefilled in step(), a few per iteration

    def reset(self) -> None:
        self._cache = self._mask = None
        self._rows, self._joining = [], []

    def _prefill(self, group: list[Request]) -> list[Request]:
        """The prompts of `group` through the model in one forward pass (after the shared head, when they
        start with it), each emitting its first token; merge those that go on into the batch's cache.
        Returns the requests already finished (their first token ended them)."""
        ids = [request.job.input_ids[0].to(self.model.device) for request in group]
        n = self._head_length(ids)
        suffixes = [row[n:] for row in ids]
        width = max(len(x) for x in suffixes)
        # Left-padded: each row's last real token is the last column. The mask covers the head (real), the
        # padding (0) and the prompt (real); each token keeps the position it has when prefilled alone.
        tokens = torch.stack([torch.cat([x.new_zeros(width - len(x)), x]) for x in suffixes])
        mask = torch.stack([torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(width - len(x), dtype=torch.long),
                                       torch.ones(len(x), dtype=torch.long)]) for x in suffixes]).to(tokens.device)
        positions = torch.stack([torch.cat([torch.full((width - len(x),), n), torch.arange(n, n + len(x))])
                                 for x in suffixes]).to(tokens.device)
        past = self._head_cache(len(group)) if n else None
        output = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=past,
                            use_cache=True, logits_to_keep=1)
        finished, going_on = [], []
        for row, request in enumerate(group):
            item, done = request.job.take(output.logits[row, -1], len(group))
            request.emit(item)
            if done:
                request.finish()
                finished.append(request)
            else:
                request.state = _Row(len(ids[row]), item.token_id)
                going_on.append(row)
        if going_on:
            keep = torch.tensor(going_on, device=tokens.device)
            cache = output.past_key_values
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
            self._merge([group[i] for i in going_on], cache, mask[keep])
        return finished

    def _head_length(self, ids: list[torch.Tensor]) -> int:
        """How many leading tokens every prompt of a group takes from the cached head (0: none)."""
        n = len(self.prefix_ids)
        head = torch.tensor(self.prefix_ids, device=self.model.device)
        if n and all(len(x) > n and torch.equal(x[:n], head) for x in ids):
            return n
        return 0

    def _head_cache(self, rows: int) -> DynamicCache:
        """A cache holding the shared head's keys and values, once per row (computed on first use)."""
        if self._prefix is None:
            head = torch.tensor([self.prefix_ids], device=self.model.device)
            cache = self.model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            self._prefix = [(layer.keys, layer.values) for layer in cache.layers]
        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1).contiguous(),
                                             v.expand(rows, -1, -1, -1).contiguous()) for k, v in self._prefix])

    def _merge(self, requests: list[Request], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled rows (their cache and mask) to the batch's, left-padding the narrower side."""
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, mask, list(requests)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for batch_layer, new_layer in zip(self._cache.layers, cache.layers):
            for name in ("keys", "values"):
                old, new = getattr(batch_layer, name), getattr(new_layer, name)
                setattr(batch_layer, name, torch.cat(_pad_left([old, new], width), dim=0))
        self._mask = torch.cat(_pad_left([self._mask, mask], width, dim=1), dim=0)
        self._rows += requests

    def _drop(self, ended: list[Request]) -> None:
        """Remove ended rows, then the padding columns no row needs any more."""
        keep = [i for i, r in enumerate(self._rows) if r not in ended]
        if not keep:
            self._cache = self._mask = None
            self._rows = []
            return
        index = torch.tensor(keep, device=self.model.device)
        self._mask = self._mask[index]
        first = int(self._mask.any(0).nonzero()[0])  # the first column some row still uses
        self._mask = self._mask[:, first:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
        self._rows = [self._rows[i] for i in keep]

    # ----------------------------------------------------------------- one iteration

    @torch.inference_mode()
    def step(self, active: list[Request]) -> list[Request]:
        ended = []
        group, budget = [], PREFILL_TOKENS
        while self._joining and (not group or self._joining[0].job.input_ids.shape[1] <= budget):
            request = self._joining.pop(0)
            if request.cancelled.is_set():  # the reader left before its first token
                self._cancel(request)
                ended.append(request)
            else:
                group.append(request)
                budget -= request.job.input_ids.shape[1]
        if group:
            ended += self._prefill(group)
            if self._joining:  # more newcomers: their first tokens before anyone's next one
                return ended

        stopped = [r for r in self._rows if self._stopped(r)]
        for request in stopped:
            self._cancel(request)
        if stopped:
            self._drop(stopped)
            ended += stopped
        if not self._rows:
            return ended

        rows = self._rows
        tokens = torch.tensor([[r.state.next_token] for r in rows], device=self.model.device)
        positions = torch.tensor([[r.state.length] for r in rows], device=self.model.device)
        self._mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long, device=self._mask.device)], 1)
        output = self.model(input_ids=tokens, attention_mask=self._mask, position_ids=positions,
                            past_key_values=self._cache, use_cache=True)
        self._cache = output.past_key_values
        finished = []
        for row, request in enumerate(rows):
            item, done = request.job.take(output.logits[row, -1], len(rows))
            request.emit(item)
            request.state.length += 1
            request.state.next_token = item.token_id
            if done:
                request.finish()
                finished.append(request)
        if finished:
            self._drop(finished)
        return ended + finished

    @staticmethod
    def _cancel(request: Request) -> None:
        if request.job.on_cancel is not None:
            request.job.on_cancel()
        request.finish()

    @staticmethod
    def _stopped(request: Request) -> bool:
        job: TokenJob = request.job
        return request.cancelled.is_set() or (job.should_stop is not None and job.should_stop())


def _pad_left(tensors: list[torch.Tensor], width: int, dim: int = 2) -> list[torch.Tensor]:
    """Zero-pad each tensor on the left of `dim` to `width`."""
    padded = []
    for t in tensors:
        missing = width - t.shape[dim]
        if missing:
            shape = list(t.shape)
            shape[dim] = missing
            t = torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
        padded.append(t)
    return padded
