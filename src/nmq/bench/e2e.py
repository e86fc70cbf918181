"""``nmq bench e2e``: token-by-token decoding of a whole model, per configuration.

Each configuration runs in a process of its own, so peak RSS is that
configuration's alone. The nmq configurations are timed *side by side*: their
processes build their models, then take turns decoding, ``--rounds`` rounds
of ``--new-tokens`` tokens each (a process waits on its pipe, idle, while
another decodes), so a ratio between them is not the drift of the machine's
memory bandwidth from one minute to the next (on the 2-core reference machine
a plain read stream ranges 39-62 GB/s within a minute). The PyTorch baselines
(whose models do not fit in memory beside the others at LLaMA-7B size) run
alone, one after another, ``--rounds`` generations each. Models are built with random weights directly in
their final form (:mod:`nmq.models.synthetic`): compressed configurations never hold
a dense copy, and keep each linear layer in its backend's packed form only.
Embeddings and norms are bf16 in every configuration; the nmq configurations
also store ``lm_head`` as dense INT4 and run the decoder's linear layers on
the ``--path`` numeric path (default ``w4a8``: int8 activations per group of
128, like ONNX Runtime's accuracy level 4), with nmq's thread pool on every
core and PyTorch's ops around them on one thread. Timing: after an untimed
warm-up generation of a few tokens, a random prompt is prefilled, then
``--new-tokens`` tokens are decoded one by one with the KV cache;
``ms_per_token`` is the median decode step over all rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ..progress import say

CONFIGS = {
    "torch-bf16": None,
    "torch-fp32": None,
    "nmq-dense-int4": "dense",
    "nmq-2:4-int4": "2:4",
    "nmq-4:8-int4": "4:8",
    "fpga-model-dense-int4": "dense",
    "fpga-model-2:4-int4": "2:4",
    "fpga-model-4:8-int4": "4:8",
}
# The design `nmq hw explore --budget zcu104 --model llama-7b` chooses at batch 1
# (benchmarks/results/hw-explore.json); its clock and bandwidth are assumptions.
FPGA_DESIGN = dict(rows=128, cols=1, max_m=8, weight_bits=4, act_buffer_depth=3072, clock_mhz=300.0, bandwidth_gbs=19.2)
WARMUP_TOKENS = 4
DEFAULT_CONFIGS = ("torch-bf16", "nmq-dense-int4", "nmq-2:4-int4", "nmq-4:8-int4")


def build(config: str, model_name: str, backend: str, threads: int | None, path: str = "w4a8"):
    """The configuration's model, ready to decode, and the backend its linear layers run on."""
    from ..compress.recipe import Recipe
    from ..models.synthetic import llama_model
    from ..shapes import SHAPES

    pattern = CONFIGS[config]
    if pattern is None:
        if threads:
            torch.set_num_threads(threads)
        dtype = torch.bfloat16 if config == "torch-bf16" else torch.float32
        model = llama_model(SHAPES[model_name], None, dtype=dtype)
        used = "torch"
    else:
        from ..backends import get_backend
        from ..backends.cpu import matmul as cpu_backend

        used = get_backend(backend, "cpu", 1).name
        if used == "cpu":
            # nmq's pool runs the linear layers on every core; PyTorch's ops
            # around them are tiny at batch 1, and two busy pools on the same
            # cores only get in each other's way.
            cpu_backend.set_threads(threads or torch.get_num_threads())
            torch.set_num_threads(1)
        elif threads:
            torch.set_num_threads(threads)
        # Embeddings and norms in bf16 like the baseline; lm_head dense INT4.
        model = llama_model(SHAPES[model_name], Recipe(pattern=pattern, bits=4, group_size=128), backend=backend,
                            dtype=torch.bfloat16, release_source=True, path=path,
                            head=Recipe(pattern="dense", bits=4, group_size=128, ignore=()))
    return model, used


class Session:
    """One configuration's model in this process: built, warmed up, then decoding round after round."""

    def __init__(self, config: str, model_name: str, prompt_tokens: int, new_tokens: int, backend: str,
                 threads: int | None, path: str = "w4a8") -> None:
        start = time.perf_counter()
        self.model, self.backend = build(config, model_name, backend, threads, path)
        self.build_s = time.perf_counter() - start
        self.config, self.model_name, self.path, self.threads = config, model_name, path, threads
        self.new_tokens = new_tokens
        vocab = self.model.config.vocab_size
        self.ids = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
        # An untimed warm-up first: the first passes over freshly built weights
        # run up to 3x slower here (page tables, caches, clocks); what is
        # measured is the steady state, for every configuration alike.
        self.generate(WARMUP_TOKENS)

    def generate(self, tokens: int | None = None):
        from ..runtime.generate import generate_ids

        return generate_ids(self.model, self.ids, tokens or self.new_tokens)

    def round(self) -> dict:
        r = self.generate()
        return {"decode_ms": r.decode_ms, "prefill_ms": r.prefill_ms}

    def record(self, rounds: list[dict]) -> dict:
        steps = [t for r in rounds for t in r["decode_ms"]]
        ms = statistics.median(steps)
        return {
            "config": self.config,
            "model": self.model_name,
            "ms_per_token": ms,
            "tokens_per_s": 1000.0 / ms,
            "prefill_ms": statistics.median(r["prefill_ms"] for r in rounds),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "backend": self.backend,
            "path": None if CONFIGS[self.config] is None else self.path,
            "prompt_tokens": self.ids.shape[1],
            "new_tokens": self.new_tokens,
            "rounds": len(rounds),
            "round_ms": [statistics.median(r["decode_ms"]) for r in rounds],
            "decode_ms": steps,
            "threads": self.threads or len(os.sched_getaffinity(0)),
            "build_s": self.build_s,
        }


def run_one(config: str, model_name: str, prompt_tokens: int, new_tokens: int, backend: str, threads: int | None,
            path: str = "w4a8", rounds: int = 1) -> dict:
    """Build one configuration and decode ``rounds`` generations in this process."""
    if config.startswith("fpga-model-"):
        return fpga_estimate(config, model_name)
    s = Session(config, model_name, prompt_tokens, new_tokens, backend, threads, path)
    return s.record([s.round() for _ in range(rounds)])


def serve(args: argparse.Namespace) -> int:
    """Worker side of an interleaved run: build, say ready, then one round per ``round`` line on stdin."""
    s = Session(args.configs, args.model, args.prompt_tokens, args.new_tokens, args.backend, args.threads, args.path)
    rounds = []
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "warmup":
            s.generate(WARMUP_TOKENS)
        elif line.strip() == "round":
            rounds.append(s.round())
        else:
            break
        print(json.dumps({"done": True}), flush=True)
    print(json.dumps(s.record(rounds)), flush=True)
    return 0


def fpga_estimate(config: str, model_name: str) -> dict:
    """Decode throughput of the generated accelerator from its cycle model (no simulation, no measurement)."""
    from ..format.pattern import Pattern
    from ..hw.config import AcceleratorConfig
    from ..hw.estimate.cycle_model import model_estimate

    p = Pattern.parse(CONFIGS[config])
    cfg = AcceleratorConfig(**FPGA_DESIGN)
    e = model_estimate(cfg, model=model_name, pattern=(p.n, p.m), bits=4, group=128, tokens=1)
    return {"config": config, "model": model_name, "ms_per_token": 1000 / e["tokens_per_second"],
            "tokens_per_s": e["tokens_per_second"], "prefill_ms": None, "peak_rss_gb": None,
            "backend": "fpga-cycle-model", "design": FPGA_DESIGN, "cycles_per_token": e["cycles"],
            "compute_cycles_per_token": e["compute_cycles"]}


def add_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "e2e", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="decode latency, tokens/s and peak memory of whole models, dense vs compressed",
        description="Decode token by token with random-weight LLaMA-shaped models, one process per configuration; "
                    "the nmq configurations take turns round by round (side by side), the PyTorch baselines run alone.",
        epilog="examples:\n  nmq bench e2e --model llama-7b --json\n  nmq bench e2e --model tiny --configs nmq-2:4-int4 --backend reference\n",
    )
    p.add_argument("--model", default="llama-7b", choices=sorted(_shapes()), help="model shape (default llama-7b)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    p.add_argument("--new-tokens", type=int, default=16, help="decoded tokens (default 16)")
    p.add_argument("--backend", default="auto", help="backend of the nmq configurations (default auto)")
    p.add_argument("--threads", type=int, help="threads (default: all)")
    p.add_argument("--path", default="w4a8", choices=["w4a8", "w4a16"],
                   help="numeric path of the nmq configurations (default w4a8: int8 activations per group of 128)")
    p.add_argument("--rounds", type=int, default=5,
                   help="generations of --new-tokens per configuration (default 5); the nmq configurations take "
                        "turns, one round each, so their ratio is measured side by side")
    p.add_argument("--sequential", action="store_true",
                   help="run every configuration alone, one after another, instead of the nmq ones side by side")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help='print records {"config", "ms_per_token", "tokens_per_s", '
                   '"prefill_ms", "peak_rss_gb", "backend", ...}')
    p.set_defaults(func=cmd_e2e)
    return p


def _shapes():
    from ..shapes import SHAPES

    return SHAPES


def cmd_e2e(args: argparse.Namespace) -> int:
    from ..errors import NMQError

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or not configs:
        raise NMQError(f"--configs: unknown {bad}; accepted: {', '.join(CONFIGS)}")
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.rounds < 1:
        raise NMQError("--new-tokens must be >= 2, --prompt-tokens >= 1 and --rounds >= 1")
    if args.serve:
        return serve(args)
    if args.one:
        print(json.dumps(run_one(configs[0], args.model, args.prompt_tokens, args.new_tokens, args.backend, args.threads,
                                 args.path, args.rounds)))
        return 0
    side_by_side = [] if args.sequential else [c for c in configs if c.startswith("nmq-")]
    records = _interleaved(side_by_side, args) if len(side_by_side) > 1 else {}
    for config in configs:
        if config in records:
            continue
        if config.startswith("fpga-model-"):
            records[config] = fpga_estimate(config, args.model)
            continue
        say(f"{config}: building {args.model}, then {args.rounds} rounds of {args.new_tokens} tokens ...", not args.quiet)
        proc = subprocess.run(_command(config, args, "--one"), capture_output=True, text=True, env=_env())
        if proc.returncode != 0:
            raise NMQError(f"configuration {config} failed: {_last_line(proc.stderr) or proc.returncode}")
        records[config] = json.loads(proc.stdout.strip().splitlines()[-1])
        records[config]["interleaved"] = False
    ordered = [records[c] for c in configs]
    if args.json:
        print(json.dumps(ordered, indent=2))
    else:
        print(format_table(ordered))
    return 0


def _env() -> dict:
    # Large temporaries of the build go straight back to the OS (no heap
    # fragmentation in the peak RSS); small allocations are unaffected.
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")


def _command(config: str, args: argparse.Namespace, mode: str) -> list[str]:
    return [sys.executable, "-m", "nmq", "bench", "e2e", mode, "--configs", config, "--model", args.model,
            "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--rounds",
            str(args.rounds), "--backend", args.backend, "--path", args.path, "--quiet"] + (
                ["--threads", str(args.threads)] if args.threads else [])


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


class _Worker:
    """A configuration's own process (`--serve`), driven one line at a time."""

    def __init__(self, config: str, args: argparse.Namespace) -> None:
        self.config = config
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(_command(config, args, "--serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=_env())
        self.expect("ready")

    def expect(self, key: str) -> dict:
        from ..errors import NMQError

        line = self.proc.stdout.readline()
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or (key and not msg.get(key)):
            self.proc.kill()
            self.err.seek(0)
            raise NMQError(f"configuration {self.config} failed: {_last_line(self.err.read()) or 'no answer'}")
        return msg

    def ask(self, command: str, key: str = "done") -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(key)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def _interleaved(configs: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Records of ``configs`` decoded side by side: one process each, taking turns round by round."""
    workers: list[_Worker] = []
    try:
        for config in configs:  # one build at a time: a build uses every core
            say(f"{config}: building {args.model} ...", not args.quiet)
            workers.append(_Worker(config, args))
        for w in workers:
            w.ask("warmup")
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}: {args.new_tokens} tokens from each of {', '.join(configs)}", not args.quiet)
            for w in workers[r % len(workers):] + workers[: r % len(workers)]:  # rotating order
                w.ask("round")
        records = {}
        for w in workers:
            records[w.config] = dict(w.ask("finish", key=""), interleaved=True)
        return records
    finally:
        for w in workers:
            w.close()


def format_table(records: list[dict]) -> str:
    base = next((r for r in records if r["config"] == "nmq-dense-int4"), None)
    bf16 = next((r for r in records if r["config"] == "torch-bf16"), None)
    lines = [f"{'config':<21} {'backend':>16} {'ms/token':>10} {'tokens/s':>9} {'prefill ms':>11} {'peak RSS GB':>12} "
             f"{'vs dense-int4':>14} {'vs bf16':>8}"]
    for r in records:
        vs_int4 = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        vs_bf16 = f"{r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x" if bf16 else "-"
        prefill = "-" if r["prefill_ms"] is None else f"{r['prefill_ms']:.1f}"
        rss = "-" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}"
        lines.append(f"{r['config']:<21} {r['backend']:>16} {r['ms_per_token']:>10.2f} {r['tokens_per_s']:>9.2f} "
                     f"{prefill:>11} {rss:>12} {vs_int4:>14} {vs_bf16:>8}")
    return "\n".join(lines)
