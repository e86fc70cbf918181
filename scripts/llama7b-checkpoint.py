"""Write a LLaMA-7B-shaped Hugging Face checkpoint with random bf16 weights (13 GB, sharded safetensors).

For measuring streamed compression on a model larger than what fits beside its
fp32 copy in memory:

    .venv/bin/python scripts/llama7b-checkpoint.py /tmp/llama7b            # 32 blocks, ~13.5 GB
    .venv/bin/python scripts/llama7b-checkpoint.py /tmp/llama7b-4 --layers 4 --vocab 256
    nmq compress /tmp/llama7b-4 -o /tmp/l7-4-sgpt --method sparsegpt   # byte-level: calibrates on bytes
    /usr/bin/time -v nmq compress /tmp/llama7b -o /tmp/l7-2of4 --method magnitude

Weights are N(0, 0.02) (the embedding and head too), seeded; the tokenizer is
left out: data-free compression and `nmq inspect` need none, and with
`--vocab 256` the model is byte-level, so calibrated methods (wanda,
sparsegpt, gptq) draw their samples from text as bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="directory to write (must not exist)")
    p.add_argument("--layers", type=int, default=32, help="decoder blocks (default 32, LLaMA-7B's)")
    p.add_argument("--shard", default="2GB", help="largest shard (default 2GB)")
    p.add_argument("--vocab", type=int, default=32000,
                   help="vocabulary size (default 32000, LLaMA's; 256 makes the model byte-level)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        print(f"llama7b-checkpoint: {args.out} exists; accepted: a new directory", file=sys.stderr)
        return 2
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(args.seed)
    # built on the meta device in bf16, then allocated once in bf16: never the 27 GB fp32 model
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    # the rotary frequencies are a non-persistent buffer: not in the files, rebuilt by whoever loads them
    model.save_pretrained(args.out, max_shard_size=args.shard, safe_serialization=True)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, bf16")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
