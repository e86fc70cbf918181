"""The demo: compress the built-in model 2:4 + INT4, show storage, check the result.

Steps: build the built-in model; compress its linear layers with SparseGPT
(2:4, INT4 inside the OBS loop, group 128, symmetric, rank metadata; 128 x 512
calibration tokens of the standard library's source); write the checkpoint; load it back; compare its
logits with (a) the dense model whose weights are replaced by the dequantized
ones, which must agree to fp32 rounding, and (b) the original dense model,
which shows what compression changed; generate a few tokens with both.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from ..calibration.run import compress_model
from ..compress.recipe import Recipe
from ..models.builtin import DEFAULT_MODEL, builtin_model, encode_text
from ..models.checkpoint import load_model, save_checkpoint
from ..models.summary import summarize
from ..runtime.generate import generate_text
from ..runtime.linear import NMQLinear
from ..runtime.text import ByteTokenizer

DEMO_PROMPT = "class Stack:\n    def __init__(self"
DEMO_TEMPERATURE = 0.8  # greedy decoding of a 4-layer byte model loops; sampling, same seed for both
AGREEMENT_TOLERANCE = 1e-4


def run_demo(out_dir: str | Path | None = None, new_tokens: int = 40, progress: bool = True) -> dict:
    """Run the demo; returns a JSON-ready record of what it measured."""
    start = time.perf_counter()
    recipe = Recipe(pattern="2:4", bits=4, group_size=128, symmetric=True, metadata="rank", method="sparsegpt")
    dense = builtin_model(DEFAULT_MODEL)
    compressed = compress_model(copy.deepcopy(dense), recipe, progress=progress)
    t_compress = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(out_dir) if out_dir else Path(tmp) / "tiny-llama-2of4-int4"
        save_checkpoint(compressed, ckpt, source=DEFAULT_MODEL, overwrite=out_dir is not None)
        storage = summarize(ckpt)
        loaded = load_model(ckpt, backend="auto")

        ids = encode_text("class Stack:\n    def push(self, item):\n        self.items.append(item)\n" * 2)
        with torch.no_grad():
            logits_loaded = loaded(ids).logits.float()
            logits_dequant = _dequantized_twin(dense, loaded)(ids).logits.float()
            logits_dense = dense(ids).logits.float()
            tok = ByteTokenizer()
            text_dense = generate_text(dense, tok, DEMO_PROMPT, new_tokens, temperature=DEMO_TEMPERATURE).text
            text_comp = generate_text(loaded, tok, DEMO_PROMPT, new_tokens, temperature=DEMO_TEMPERATURE).text

    agreement = _rel_err(logits_loaded, logits_dequant)
    return {
        "model": DEFAULT_MODEL,
        "recipe": recipe.to_dict(),
        "checkpoint": str(ckpt) if out_dir else None,
        "storage": {"compressed": storage["compressed"], "checkpoint": storage["checkpoint"]},
        "compressed_layers": sum(isinstance(m, NMQLinear) for m in loaded.modules()),
        "logits_rel_err_vs_dequantized": agreement,
        "logits_rel_err_vs_dense": _rel_err(logits_loaded, logits_dense),
        "top1_agreement_vs_dense": float((logits_loaded.argmax(-1) == logits_dense.argmax(-1)).float().mean()),
        "check_passed": agreement <= AGREEMENT_TOLERANCE,
        "prompt": DEMO_PROMPT,
        "generated_dense": text_dense,
        "generated_compressed": text_comp,
        "compress_seconds": t_compress,
        "seconds": time.perf_counter() - start,
    }


def _dequantized_twin(dense: torch.nn.Module, compressed: torch.nn.Module) -> torch.nn.Module:
    """The dense model with each compressed layer's weight replaced by its dequantized form."""
    twin = copy.deepcopy(dense)
    for name, module in compressed.named_modules():
        if isinstance(module, NMQLinear):
            twin.get_submodule(name).weight.data = module.nmq_weight.to_dense()
    return twin


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def format_demo(r: dict) -> str:
    c, k = r["storage"]["compressed"], r["storage"]["checkpoint"]
    fields = ", ".join(f"{n} {v['bits_per_weight']:.3f}" for n, v in c["fields"].items())
    verdict = "PASS" if r["check_passed"] else "FAIL"
    return "\n".join([
        f"nmq demo: built-in model '{r['model']}', {r['compressed_layers']} linear layers compressed "
        f"2:4 + INT4 by SparseGPT (group 128, symmetric, rank metadata; 128 x 512 calibration tokens) "
        f"in {r['compress_seconds']:.1f} s",
        "",
        f"storage, compressed layers: {c['bits_per_weight']:.3f} bits/weight "
        f"({c['ratio_vs_fp16']:.2f}x smaller than fp16, {c['ratio_vs_fp32']:.2f}x than fp32)",
        f"  by field (bits/weight): {fields}",
        f"storage, whole checkpoint:  {k['bits_per_weight']:.3f} bits/weight, {k['bytes'] / 2**20:.2f} MiB "
        f"({k['ratio_vs_fp32']:.2f}x smaller than fp32; embeddings and lm_head stay dense)",
        "",
        f"check [{verdict}]: reloaded checkpoint vs dense model with dequantized weights: "
        f"logits rel. error {r['logits_rel_err_vs_dequantized']:.2e} (tolerance {AGREEMENT_TOLERANCE:g})",
        f"effect of compression vs the original dense model: logits rel. error "
        f"{r['logits_rel_err_vs_dense']:.3f}, next-token (top-1) agreement {r['top1_agreement_vs_dense']:.1%} "
        "('nmq bench accuracy' compares the methods by perplexity)",
        "",
        f"continuation of {r['prompt']!r} (sampled, temperature {DEMO_TEMPERATURE}, same seed):",
        f"  dense:      {r['prompt'] + r['generated_dense']!r}",
        f"  compressed: {r['prompt'] + r['generated_compressed']!r}",
        "",
        f"done in {r['seconds']:.1f} s",
    ])
