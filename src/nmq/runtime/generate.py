"""Text generation with timing: prefill, per-token decode latency, tokens/s.

LLaMA, Mistral, Qwen2 and Qwen3 models decode on :class:`nmq.runtime.decoder.LlamaDecoder` (a KV
cache and only the ops the arithmetic needs), others on their own
``generate``; compressed layers run on the chosen backend. Tokens stream to a
callback as they are produced.

>>> import nmq
>>> from nmq.runtime.text import ByteTokenizer
>>> r = generate_text(nmq.builtin_model(), ByteTokenizer(), "def ", max_new_tokens=4)
>>> len(r.token_ids), r.prefill_ms > 0
(4, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from .decoder import LlamaDecoder, supports


@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_ms: float
    decode_ms: list[float] = field(default_factory=list)
    decoder: str = "lean"  # what ran the steps: "lean" (LlamaDecoder) or "hf" (the model's own generate)

    @property
    def ms_per_token(self) -> float:
        return statistics.median(self.decode_ms) if self.decode_ms else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 / self.ms_per_token if self.decode_ms else float("nan")

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
                "prompt_tokens": self.prompt_tokens, "new_tokens": len(self.token_ids),
                "prefill_ms": self.prefill_ms, "ms_per_token": self.ms_per_token, "tokens_per_s": self.tokens_per_s,
                "decoder": self.decoder}


class _Streamer:
    """Receives the prompt, then one token per step, from ``generate``; records when each arrived."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None, drop: tuple[int, ...] = ()) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.drop = drop  # the stop tokens generate hands over too; the reply ends before them
        self.times: list[float] = []
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        ids = [i for i in value.reshape(-1).tolist() if i not in self.drop]
        if not ids:
            return
        self.times.append(time.perf_counter())
        self.ids.extend(ids)
        if self.on_text is not None:
            text = self.tokenizer.decode(self.ids)
            # hold back an incomplete UTF-8 sequence until its last byte arrives
            stable = text.rstrip("\ufffd")
            if len(stable) > len(self.shown):
                self.on_text(stable[len(self.shown):])
                self.shown = stable

    def end(self) -> None:
        if self.on_text is not None:
            text = self.tokenizer.decode(self.ids)
            if len(text) > len(self.shown):
                self.on_text(text[len(self.shown):])
            self.shown = text


def _eos_ids(model) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def _lean_generate(model, ids: torch.Tensor, max_new_tokens: int, streamer: _Streamer, temperature: float,
                   stop_at_eos: bool) -> None:
    """What ``model.generate`` does here, on :class:`nmq.runtime.decoder.LlamaDecoder`: exactly
    ``max_new_tokens`` (end-of-sequence is never chosen), or up to the first end-of-sequence with
    ``stop_at_eos``."""
    dec = LlamaDecoder(model, ids.shape[1] + max_new_tokens)
    eos = _eos_ids(model)
    streamer.put(ids)
    token = ids
    for _ in range(max_new_tokens):
        logits = dec.step(token)
        if eos and not stop_at_eos:
            logits[eos] = float("-inf")
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)
        else:
            nxt = logits.argmax().reshape(1)
        if stop_at_eos and int(nxt) in eos:
            break
        streamer.put(nxt)
        token = nxt.view(1, 1)
    streamer.end()


@torch.no_grad()
def generate_ids(model, ids: torch.Tensor, max_new_tokens: int = 64, tokenizer=None, on_text=None,
                 temperature: float = 0.0, seed: int = 0, decoder: str = "auto", stop_at_eos: bool = False) -> Generation:
    """Continue token ids ``[1, prompt]`` by exactly ``max_new_tokens`` (up to the first end-of-sequence with
    ``stop_at_eos``, which it does not include), timing each step.

    ``decoder``: ``auto`` runs LLaMA-architecture models on :class:`nmq.runtime.decoder.LlamaDecoder` and others on
    their own ``generate``; ``hf`` always uses ``generate``.
    """
    if decoder not in ("auto", "hf"):
        raise ValueError(f"decoder must be 'auto' or 'hf', got {decoder!r}")
    streamer = _Streamer(tokenizer, on_text if tokenizer is not None else None,
                         tuple(_eos_ids(model)) if stop_at_eos else ())
    sample = temperature > 0
    torch.manual_seed(seed)
    start = time.perf_counter()
    lean = decoder == "auto" and ids.shape[0] == 1 and supports(model, ids.shape[1] + max_new_tokens)
    if lean:
        _lean_generate(model, ids, max_new_tokens, streamer, temperature, stop_at_eos)
    else:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                       min_new_tokens=None if stop_at_eos else max_new_tokens, do_sample=sample,
                       temperature=temperature if sample else None, top_p=None, top_k=None, streamer=streamer,
                       pad_token_id=0)
    times = [start] + streamer.times
    return Generation(
        prompt="",
        text=tokenizer.decode(streamer.ids) if tokenizer is not None else "",
        token_ids=streamer.ids,
        prompt_tokens=ids.shape[1],
        prefill_ms=(times[1] - times[0]) * 1000 if len(times) > 1 else float("nan"),
        decode_ms=[(b - a) * 1000 for a, b in pairwise(times[1:])],
        decoder="lean" if lean else "hf",
    )


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, on_text=None,
                  temperature: float = 0.0, seed: int = 0, chat: bool = False) -> Generation:
    """Greedy (or, with ``temperature`` > 0, sampled) continuation of ``prompt``; with ``chat``, the reply to
    ``prompt`` as a user's message (the tokenizer's chat template), up to its end-of-sequence."""
    ids = torch.tensor([tokenizer.chat_ids(prompt) if chat else tokenizer.encode(prompt)], dtype=torch.long)
    r = generate_ids(model, ids, max_new_tokens, tokenizer, on_text, temperature, seed, stop_at_eos=chat)
    r.prompt = prompt
    return r
