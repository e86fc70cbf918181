"""Perplexity of a causal LM on a text, with strided windows (deterministic).

Each token is scored once, with up to ``window - stride`` tokens of context
already seen by the previous window (the usual sliding-window evaluation).

>>> import torch, nmq
>>> model = nmq.builtin_model()
>>> r = perplexity(model, torch.arange(200) % 256, window=64, stride=32)
>>> r.tokens, r.perplexity > 1
(199, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ModelError


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per token, nats
    tokens: int
    window: int
    stride: int

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int = 512, stride: int = 256, batch: int = 8,
               progress: bool = False) -> Perplexity:
    """Perplexity of ``model`` on token ids ``[n]``."""
    ids = ids.reshape(-1).long()
    n = ids.numel()
    if n < 2:
        raise ModelError(f"text has {n} token(s); perplexity needs at least 2")
    if not 0 < stride <= window:
        raise ModelError(f"stride {stride} / window {window}: accepted 0 < stride <= window")
    spans = []  # (begin, end, first scored position inside the window)
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        first = max(prev_end - begin, 1)  # the text's first token has no context and is not scored
        if end - begin > first:
            spans.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    total, count = 0.0, 0
    it = range(0, len(spans), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="perplexity", unit="batch", leave=False)
    for i in it:
        group = spans[i : i + batch]
        length = max(e - b for b, e, _ in group)
        x = torch.zeros(len(group), length, dtype=torch.long)
        for j, (b, e, _) in enumerate(group):
            x[j, : e - b] = ids[b:e]
        logits = model(input_ids=x, use_cache=False).logits
        for j, (b, e, first) in enumerate(group):
            # One window at a time: fp32 log-probabilities of a whole batch over a large vocabulary take GBs.
            logp = torch.log_softmax(logits[j, :-1].float(), dim=-1)
            nll = -logp.gather(-1, x[j, 1:].unsqueeze(-1)).squeeze(-1)
            # target at position p (p >= first) is predicted from position p - 1
            total += float(nll[first - 1 : e - b - 1].double().sum())
            count += e - b - first
        del logits
    mean = total / count
    return Perplexity(math.exp(mean), mean, count, window, stride)
