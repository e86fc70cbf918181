"""Train the built-in reference model `tiny-llama` on the Python standard library's source.

    .venv/bin/python scripts/train_tiny_llama.py

Byte-level LLaMA (config: nmq.models.builtin.BUILTIN_CONFIGS["tiny-llama"]), fixed seed.
The standard library's .py files (tests excluded) are split by file
(nmq.calibration.data.stdlib_split): a file whose path hashes to 0 mod 16 is held out. Writes, under src/nmq/data/:
  tiny-llama.safetensors   the trained weights (fp16)
  tiny-llama.json          how they were made (steps, tokens, losses, time)
  stdlib-heldout.txt       the held-out text the accuracy table is measured on
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch

DATA = pathlib.Path(__file__).resolve().parents[1] / "src" / "nmq" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 10,000 steps (41M tokens, ~48 per weight) took 25 minutes on the 2-core reference machine; a model this
    # small needs that many tokens per weight before pruning hurts it the way it hurts large LLMs.
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=29.0, help="stop early after this much wall time")
    ap.add_argument("--batch", type=int, default=8)
    # as long as the evaluation window and the calibration samples: a model
    # trained on shorter sequences does not carry over to later positions
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sys.path.insert(0, str(DATA.parents[1]))
    from nmq.models.builtin import BUILTIN_CONFIGS
    from nmq.calibration.data import stdlib_split
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    train, held = stdlib_split()
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "stdlib-heldout.txt").write_bytes(held)
    data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
    print(f"train {len(train) / 1e6:.2f} MB, held-out {len(held) / 1e6:.2f} MB", flush=True)

    model = LlamaForCausalLM(LlamaConfig(**BUILTIN_CONFIGS["tiny-llama"]))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = 100
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    losses = []
    step = 0
    for step in range(1, args.steps + 1):
        # progress is steps or wall time, whichever is further along, so a time-bounded run still anneals
        frac = min(1.0, max(step / args.steps, (time.perf_counter() - start) / (args.minutes * 60)))
        lr = args.lr * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(data) - args.seq, (args.batch,), generator=gen)
        batch = torch.stack([data[i : i + args.seq] for i in idx.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss  # the model shifts labels by one itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - start
        if step % 50 == 0:
            recent = sum(losses[-50:]) / 50
            print(f"step {step}/{args.steps} loss {recent:.3f} ({recent / math.log(2):.3f} bits/byte) "
                  f"lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
        if elapsed > args.minutes * 60 or frac >= 1.0:
            print(f"stopping at the time budget after {step} steps", flush=True)
            break

    from safetensors.torch import save_file

    model.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(DATA / "tiny-llama.safetensors"))
    record = {
        "steps": step, "batch": args.batch, "seq": args.seq, "lr": args.lr, "seed": args.seed,
        "tokens": step * args.batch * args.seq, "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "minutes": (time.perf_counter() - start) / 60, "python": sys.version.split()[0],
        "train_bytes": len(train), "heldout_bytes": len(held),
    }
    (DATA / "tiny-llama.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
