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
import torch.nn.functional as F

from ..backends.cpu.gemm import fp32_linears
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


# Positions per log-softmax: [chunk, vocab] fp32 at a time (25 MB for a 49k vocabulary), so the memory of an
# evaluation does not grow with the vocabulary or the batch.
HEAD_CHUNK = 128


def _body_and_head(model: torch.nn.Module):
    """(hidden states of ``x``, logits of hidden states) for a Hugging Face causal LM, or None when it has no
    separable head (then the whole model runs and its logits are read in chunks)."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None:
        return None
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)  # Gemma 2/3

    def body(x):
        return base(input_ids=x, use_cache=False).last_hidden_state

    def logits(h):
        z = head(h)
        return torch.tanh(z / cap) * cap if cap else z

    return body, logits


def _already_logits(z: torch.Tensor) -> torch.Tensor:
    return z


def _nll_sum(logits_of, h: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum of -log p(target) over positions, ``HEAD_CHUNK`` positions at a time."""
    total = 0.0
    for i in range(0, targets.numel(), HEAD_CHUNK):
        z = logits_of(h[i : i + HEAD_CHUNK]).float()
        # cross_entropy is one fused log-softmax pass over the vocabulary (logsumexp and a gather take three)
        nll = F.cross_entropy(z, targets[i : i + HEAD_CHUNK], reduction="none")
        total += float(nll.double().sum())
    return total


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
    split = _body_and_head(model)
    total, count = 0.0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(e - b - f for b, e, f in spans), desc="perplexity", unit="tok", leave=False)
    # dense fp32 layers (a dense model's, an lm_head's) on oneDNN's GEMM: 1.6x MKL's on this machine's AMD CPU
    with fp32_linears():
        for i in range(0, len(spans), batch):
            group = spans[i : i + batch]
            length = max(e - b for b, e, _ in group)
            x = torch.zeros(len(group), length, dtype=torch.long)
            for j, (b, e, _) in enumerate(group):
                x[j, : e - b] = ids[b:e]
            if split is None:
                out, logits_of = model(input_ids=x, use_cache=False).logits, _already_logits
            else:
                out, logits_of = split[0](x), split[1]
            for j, (b, e, first) in enumerate(group):
                # the target at position p (p >= first) is predicted from position p - 1
                total += _nll_sum(logits_of, out[j, first - 1 : e - b - 1], x[j, first : e - b])
                count += e - b - first
                if bar is not None:
                    bar.update(e - b - first)
            del out
    if bar is not None:
        bar.close()
    mean = total / count
    return Perplexity(math.exp(mean), mean, count, window, stride)
