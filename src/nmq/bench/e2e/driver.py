"""``nmq bench e2e``'s configurations in their worker processes (:mod:`nmq.bench.e2e.worker`): alone, or side by side.

Side by side, the processes build their models one at a time (a build uses
every core), then take turns decoding, one round each in an order that
rotates from round to round; a process waits on its pipe, idle, while another
decodes. A ratio between them is then not the drift of the machine's memory
bandwidth from one minute to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from ...errors import NMQError
from ...progress import say
from .worker import Spec


def worker_env() -> dict:
    # Large temporaries of the build go straight back to the OS (no heap
    # fragmentation in the peak RSS); small allocations are unaffected.
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")


class Worker:
    """One configuration's process, built and ready, driven one request at a time."""

    def __init__(self, config: str, spec: Spec) -> None:
        self.config = config
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the process, closed by close)
        self.proc = subprocess.Popen([sys.executable, "-m", "nmq.bench.e2e.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=worker_env())
        self.ask(spec.request(config), "ready")

    def ask(self, request: dict, key: str = "done") -> dict:
        """The answer to ``request``; NMQError, with the worker's own words where it has any, without ``key``."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone: its last words are on stderr
        try:
            msg = json.loads(self.proc.stdout.readline())
        except ValueError:
            msg = None
        if isinstance(msg, dict) and key in msg:
            return msg
        if isinstance(msg, dict) and "error" in msg:
            reason = msg["error"]
        else:
            self.proc.kill()
            self.proc.wait()
            self.err.seek(0)
            lines = self.err.read().strip().splitlines()
            reason = lines[-1] if lines else f"no answer (exit status {self.proc.returncode})"
        raise NMQError(f"configuration {self.config} failed: {reason}")

    def record(self, interleaved: bool) -> dict:
        return dict(self.ask({"op": "finish"}, "record")["record"], interleaved=interleaved)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def alone(config: str, spec: Spec, rounds: int, verbose: bool = True) -> dict:
    """The record of ``config`` decoding ``rounds`` rounds in its own process, nothing else running."""
    say(f"{config}: building {spec.model}, then {rounds} rounds of {spec.new_tokens} tokens ...", verbose)
    w = Worker(config, spec)
    try:
        for _ in range(rounds):
            w.ask({"op": "round"})
        return w.record(interleaved=False)
    finally:
        w.close()


def side_by_side(configs: list[str], spec: Spec, rounds: int, verbose: bool = True) -> dict[str, dict]:
    """Records of ``configs`` decoded side by side: one process each, taking turns round by round."""
    workers: list[Worker] = []
    try:
        for config in configs:
            say(f"{config}: building {spec.model} ...", verbose)
            workers.append(Worker(config, spec))
        for w in workers:
            w.ask({"op": "warmup"})
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}: {spec.new_tokens} tokens from each of {', '.join(configs)}", verbose)
            for w in workers[r % len(workers):] + workers[: r % len(workers)]:
                w.ask({"op": "round"})
        return {w.config: w.record(interleaved=True) for w in workers}
    finally:
        for w in workers:
            w.close()
