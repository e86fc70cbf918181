"""Perplexity with the head applied in position chunks equals the whole log-softmax at once."""

import math

import pytest
import torch
import transformers as T

import nmq
from nmq.runtime import evaluate
from nmq.runtime.evaluate import perplexity


def full_softmax_nll(model, ids, window, stride):
    """Windows one by one, the whole logits and log-softmax of each: the definition, without economies."""
    n, total, count, prev_end = ids.numel(), 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        first = max(prev_end - begin, 1)
        if end - begin > first:
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[None, begin:end]).logits[0].double(), dim=-1)
            total -= float(logp[first - 1 : end - begin - 1].gather(-1, ids[begin + first : end, None]).sum())
            count += end - begin - first
        prev_end = end
        if end == n:
            break
    return total / count, count


def gemma2():
    config = T.Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=0.5)  # below the logits: it bites
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return T.Gemma2ForCausalLM(config).eval()


@pytest.mark.parametrize("make", [nmq.builtin_model, gemma2], ids=["llama", "gemma2-softcap"])
def test_chunked_head_equals_the_whole_log_softmax(make, monkeypatch):
    monkeypatch.setattr(evaluate, "HEAD_CHUNK", 7)  # many chunks, the last one short
    model = make()
    ids = torch.randint(0, model.config.vocab_size, (300,), generator=torch.Generator().manual_seed(1))
    want, count = full_softmax_nll(model, ids, window=96, stride=40)
    r = perplexity(model, ids, window=96, stride=40, batch=3)
    assert r.tokens == count == 299
    assert math.isclose(r.nll, want, rel_tol=1e-5)


def test_a_model_without_a_separate_head_is_read_from_its_logits():
    class Whole(torch.nn.Module):  # no base_model / get_output_embeddings
        def __init__(self):
            super().__init__()
            self.inner = nmq.builtin_model()

        def forward(self, input_ids, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

    model = Whole()
    ids = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(2))
    assert math.isclose(perplexity(model, ids, window=64, stride=32).nll,
                        perplexity(model.inner, ids, window=64, stride=32).nll, rel_tol=1e-6)
