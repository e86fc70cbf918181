"""Decode latency of nmq 2:4, 4:8 and dense INT4 LLaMA-7B-shaped models, interleaved in one process.

    .venv/bin/python scripts/decode_interleaved.py --layers 6

`nmq bench e2e` runs each configuration in a process of its own (peak memory
per configuration); on a machine whose memory bandwidth drifts minute to
minute, their ratio then carries that drift. Here the three models live in one
process and take turns, round after round, so their ratio is side by side.
Same models as `nmq bench e2e` (random weights built directly in packed form,
lm_head dense INT4, w4a8 path, nmq pool on every core, PyTorch on one thread).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from nmq.backends import cpu as cpu_backend
from nmq.generate import generate_ids
from nmq.recipe import Recipe
from nmq.synthetic import SHAPES, llama_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6, help="decoder layers of LLaMA-7B shape (default 6)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=12)
    args = ap.parse_args()
    shape = dict(SHAPES["llama-7b"], num_hidden_layers=args.layers)
    threads = torch.get_num_threads()
    cpu_backend.set_threads(threads)
    head = Recipe(pattern="dense", bits=4, group_size=128, ignore=())
    models = {p: llama_model(shape, Recipe(pattern=p, bits=4, group_size=128), dtype=torch.bfloat16,
                             release_source=True, path="w4a8", head=head, backend="cpu")
              for p in ("2:4", "4:8", "dense")}
    torch.set_num_threads(1)
    ids = torch.randint(0, shape["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    for m in models.values():
        generate_ids(m, ids, 4)  # warm-up
    times: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(args.rounds):
        for p, m in models.items():
            times[p].append(generate_ids(m, ids, args.new_tokens).ms_per_token)
    med = {p: statistics.median(v) for p, v in times.items()}
    for p, v in med.items():
        print(f"{p:6s} {v:7.2f} ms/token  rounds: {' '.join(f'{t:.1f}' for t in times[p])}")
    print(f"dense / 2:4 = {med['dense'] / med['2:4']:.3f}, dense / 4:8 = {med['dense'] / med['4:8']:.3f}")


if __name__ == "__main__":
    main()
