"""``nmq bench accuracy``: perplexity of the reference model under each compression method.

Every row starts from the same dense model, compresses it with one recipe
(calibrated rows use the same seeded calibration samples from the standard
library's training split) and measures perplexity on the held-out text.
Pruning-only rows keep fp32 values (the mask and, for SparseGPT, the OBS
update applied); the others are the dequantized INT4 weights, which is what
every backend computes on the w4a16 path.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass

import torch

from ..calibration.data import Calibration, calibration_tokens, heldout_path
from ..calibration.run import compress_model
from ..compress.recipe import Recipe
from ..models.builtin import DEFAULT_MODEL, builtin_model
from ..runtime.evaluate import perplexity
from ..runtime.text import ByteTokenizer


@dataclass(frozen=True)
class Row:
    name: str
    recipe: Recipe | None
    quantize: bool = True


def rows() -> list[Row]:
    g = dict(bits=4, group_size=128, symmetric=True)
    a = dict(g, symmetric=False)
    return [
        Row("dense", None),
        Row("int4-rtn", Recipe(pattern="dense", method="rtn", **g)),
        Row("int4-rtn-asym", Recipe(pattern="dense", method="rtn", **a)),
        Row("int4-gptq", Recipe(pattern="dense", method="gptq", **g)),
        Row("int4-gptq-asym", Recipe(pattern="dense", method="gptq", **a)),
        Row("2:4-magnitude", Recipe(pattern="2:4", method="magnitude", **g), quantize=False),
        Row("2:4-wanda", Recipe(pattern="2:4", method="wanda", **g), quantize=False),
        Row("2:4-sparsegpt", Recipe(pattern="2:4", method="sparsegpt", **g), quantize=False),
        Row("2:4-sparsegpt+int4", Recipe(pattern="2:4", method="sparsegpt", **g)),
        Row("2:4-sparsegpt+int4-asym", Recipe(pattern="2:4", method="sparsegpt", **a)),
        Row("2:4-sparsegpt+int4+recover", Recipe(pattern="2:4", method="sparsegpt", recover=2, **g)),
        Row("4:8-wanda", Recipe(pattern="4:8", method="wanda", **g), quantize=False),
        Row("4:8-sparsegpt", Recipe(pattern="4:8", method="sparsegpt", **g), quantize=False),
        Row("4:8-sparsegpt+int4", Recipe(pattern="4:8", method="sparsegpt", **g)),
    ]


def run_accuracy(cal: Calibration, eval_bytes: int, window: int, stride: int, only: list[str] | None = None,
                 progress: bool = True, say=print) -> list[dict]:
    base = builtin_model(DEFAULT_MODEL)
    text = heldout_path().read_bytes()[:eval_bytes]
    ids = torch.tensor(ByteTokenizer().encode(text))
    tokens = calibration_tokens(cal)
    records = []
    for row in rows():
        if only and row.name not in only:
            continue
        start = time.perf_counter()
        model = copy.deepcopy(base)
        if row.recipe is not None:
            data = tokens if row.recipe.needs_calibration else None
            compress_model(model, row.recipe, data, progress=progress, quantize=row.quantize, batch=cal.batch)
        seconds = time.perf_counter() - start
        ppl = perplexity(model, ids, window=window, stride=stride, progress=progress)
        rec = {
            "row": row.name,
            "perplexity": ppl.perplexity,
            "bits_per_byte": ppl.bits_per_token,
            "recipe": None if row.recipe is None else {**row.recipe.to_dict(), "quantized": row.quantize},
            "calibration": None if row.recipe is None or not row.recipe.needs_calibration
            else {"samples": cal.samples, "seq_len": cal.seq_len, "seed": cal.seed, "text": cal.text or "stdlib-train"},
            "seconds": seconds,
            "eval": {"text": "stdlib-heldout", "tokens": ppl.tokens, "window": window, "stride": stride},
            "model": DEFAULT_MODEL,
        }
        records.append(rec)
        say(f"{row.name:<26} perplexity {ppl.perplexity:8.4f}  compress {seconds:6.1f} s")
    return records


def block_cost(samples: int = 128, seq_len: int = 512, method: str = "sparsegpt", progress: bool = True,
               dtype: torch.dtype = torch.bfloat16) -> dict:
    """Time and peak memory to compress one LLaMA-7B-shaped decoder block (random weights) with calibration.

    The block is bf16 by default, as LLaMA-7B's checkpoint is 16-bit and a
    7B model only fits this class of machine (24 GB) in 16 bits; the
    Hessians and the SparseGPT updates are fp32 either way.
    """
    import resource

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=seq_len,
                         tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval().to(dtype)
    tokens = torch.randint(0, 256, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    recipe = Recipe(pattern="2:4", bits=4, group_size=128, method=method)
    start = time.perf_counter()
    compress_model(model, recipe, tokens, progress=progress, batch=8)
    seconds = time.perf_counter() - start
    return {"row": f"llama-7b-block-{method}+int4", "seconds": seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "calibration": {"samples": samples, "seq_len": seq_len}, "recipe": {**recipe.to_dict(), "quantized": True},
            "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch.")}


def format_markdown(records: list[dict]) -> str:
    dense = next((r["perplexity"] for r in records if r["row"] == "dense"), None)
    lines = ["| row | perplexity | vs dense | bits/byte | recipe | calibration | seconds |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for r in records:
        rec = r["recipe"]
        recipe = "-" if rec is None else (
            f"{'dense' if rec['pattern'] == '1:1' else rec['pattern']} {rec['method']}"
            + (f" int{rec['bits']} g{rec['group_size']}" if rec["quantized"] else " (fp32 values)")
            + (f" + recover {rec['recover']}" if rec.get("recover") else ""))
        cal = "-" if r["calibration"] is None else f"{r['calibration']['samples']}x{r['calibration']['seq_len']}"
        rel = f"{r['perplexity'] / dense:.3f}x" if dense else "-"
        lines.append(f"| {r['row']} | {r['perplexity']:.4f} | {rel} | {r['bits_per_byte']:.4f} | {recipe} | {cal} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def add_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "accuracy", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="perplexity of the reference model under each compression method",
        description="Compress the built-in reference model with each method and measure held-out perplexity.",
        epilog="examples:\n  nmq bench accuracy\n  nmq bench accuracy --rows dense,2:4-wanda --json\n",
    )
    p.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    p.add_argument("--calibration", metavar="FILE", help="calibration text (default: the standard library's training split)")
    p.add_argument("--eval-bytes", type=int, default=200_000, help="held-out bytes to evaluate on (default 200000)")
    p.add_argument("--window", type=int, default=512, help="evaluation window (default 512)")
    p.add_argument("--stride", type=int, default=256, help="evaluation stride (default 256)")
    p.add_argument("--rows", help="comma-separated subset of rows: " + ", ".join(r.name for r in rows()))
    p.add_argument("--block", choices=["llama-7b"], help="instead of the table: time and peak RSS of compressing "
                   "one LLaMA-7B-shaped decoder block (random weights) with SparseGPT + INT4")
    p.add_argument("--json", action="store_true", help='print records {"row", "perplexity", "recipe", "calibration", "seconds"}')
    p.set_defaults(func=cmd_accuracy)
    return p


def cmd_accuracy(args: argparse.Namespace) -> int:
    import sys

    from ..errors import NMQError

    only = None
    if args.rows:
        only = [r.strip() for r in args.rows.split(",") if r.strip()]
        known = {r.name for r in rows()}
        bad = [r for r in only if r not in known]
        if bad:
            raise NMQError(f"--rows: unknown row(s) {bad}; accepted: {', '.join(r.name for r in rows())}")
    if args.block:
        rec = block_cost(args.samples, args.seq_len, progress=not args.quiet)
        print(json.dumps([rec], indent=2) if args.json else
              f"{rec['row']}: {rec['seconds']:.1f} s, peak RSS {rec['peak_rss_gb']:.2f} GB "
              f"({args.samples} x {args.seq_len} calibration tokens, {rec['threads']} threads)")
        return 0
    cal = Calibration(samples=args.samples, seq_len=args.seq_len, text=args.calibration)
    say = (lambda s: print(s, file=sys.stderr)) if not args.quiet else (lambda s: None)
    records = run_accuracy(cal, args.eval_bytes, args.window, args.stride, only, progress=not args.quiet, say=say)
    print(json.dumps(records, indent=2) if args.json else format_markdown(records))
    return 0
