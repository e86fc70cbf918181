"""The process of one ``nmq bench e2e`` configuration: ``python -m nmq.bench.e2e.worker``.

Each configuration decodes in a process of its own, so that its peak RSS is
its own. The driver (:mod:`nmq.bench.e2e.driver`) starts this module and
talks to it one line at a time: each request is a JSON object on one line of
stdin, answered by one JSON object on one line of stdout::

    {"op": "build", "config": "nmq-2:4-int4", "model": "tiny", "prompt_tokens": 4, "new_tokens": 4,
     "backend": "auto", "threads": null, "path": "w4a8"}      -> {"ready": true}
    {"op": "warmup"}                                            -> {"done": true}
    {"op": "round"}                                             -> {"done": true}
    {"op": "finish"}                                            -> {"record": {...}}

``build`` comes first, once: it builds the model and decodes an untimed
warm-up. ``warmup`` decodes a few untimed tokens again (the driver sends it
once every model is built, since the other builds evicted this one's caches);
``round`` is one timed generation of ``new_tokens`` tokens after a prefill of
``prompt_tokens``; ``finish``, after one round at least, answers with the
record of the rounds so far and ends the worker. Anything else (a line that is not a JSON object, an
unknown ``op``, a ``build`` out of turn or with missing or unknown fields, a
configuration that cannot be built here) is answered by ``{"error": "<one
line>"}`` and the worker exits with status 2. The end of stdin ends it with
status 0 and no record. Nothing but answers goes to stdout.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields

import torch

from ...backends.base import NUMERIC_PATHS
from ...errors import NMQError
from ...runtime.generate import generate_ids
from ...shapes import SHAPES
from ..common import BenchError, at_least, cpu_threads
from .configs import CONFIGS, Config
from .models import build, decode_record

WARMUP_TOKENS = 4


@dataclass(frozen=True)
class Spec:
    """What every configuration of one run decodes: the ``build`` request's fields beside ``config``."""

    model: str
    prompt_tokens: int
    new_tokens: int
    backend: str
    threads: int | None
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model not in SHAPES:
            raise BenchError(f"--model {self.model!r} is unknown; accepted: {', '.join(SHAPES)}")
        at_least(self.prompt_tokens, "--prompt-tokens", 1)
        # The first new token comes out of the prefill: timing a decode step takes a second one.
        at_least(self.new_tokens, "--new-tokens", 2)
        if self.threads is not None:
            at_least(self.threads, "--threads", 1)
        if self.path not in NUMERIC_PATHS:
            raise BenchError(f"--path {self.path!r} is unknown; accepted: {', '.join(NUMERIC_PATHS)}")

    def request(self, config: str) -> dict:
        return {"op": "build", "config": config, **asdict(self)}


class Session:
    """One configuration's model in this process: built, warmed up, then decoding round after round."""

    def __init__(self, config: Config, spec: Spec) -> None:
        self.config, self.spec = config, spec
        self.threads = cpu_threads(spec.threads)
        start = time.perf_counter()
        self.model, self.backend = build(config, spec.model, spec.backend, self.threads, spec.path)
        self.build_s = time.perf_counter() - start
        vocab = self.model.config.vocab_size
        self.ids = torch.randint(0, vocab, (1, spec.prompt_tokens), generator=torch.Generator().manual_seed(0))
        self.rounds: list[dict] = []
        # An untimed warm-up first: the first passes over freshly built weights
        # run up to 3x slower here (page tables, caches, clocks); what is
        # measured is the steady state, for every configuration alike.
        self.warmup()

    def warmup(self) -> None:
        generate_ids(self.model, self.ids, WARMUP_TOKENS)

    def round(self) -> None:
        r = generate_ids(self.model, self.ids, self.spec.new_tokens)
        self.rounds.append({"decode_ms": r.decode_ms, "prefill_ms": r.prefill_ms})

    def record(self) -> dict:
        steps = [t for r in self.rounds for t in r["decode_ms"]]
        return decode_record(
            self.config, self.spec.model, statistics.median(steps),
            statistics.median(r["prefill_ms"] for r in self.rounds),
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, self.backend,
            path=None if self.config.kind == "torch" else self.spec.path,
            prompt_tokens=self.spec.prompt_tokens, new_tokens=self.spec.new_tokens, rounds=len(self.rounds),
            round_ms=[statistics.median(r["decode_ms"]) for r in self.rounds], decode_ms=steps,
            threads=self.threads, build_s=self.build_s,
        )


def session(request: dict) -> Session:
    """The session a ``build`` request asks for."""
    fields = {k: v for k, v in request.items() if k not in ("op", "config")}
    names = tuple(f.name for f in dataclass_fields(Spec))
    missing, unknown = [n for n in names if n not in fields], [n for n in fields if n not in names]
    if missing or unknown:
        raise BenchError(f"build: missing {missing}, unknown {unknown}; a build request holds op, config, "
                         f"{', '.join(names)}")
    spec = Spec(**fields)
    config = CONFIGS.get(request.get("config")) if isinstance(request.get("config"), str) else None
    if config is None or config.kind == "fpga-model":
        accepted = ", ".join(c.name for c in CONFIGS.values() if c.kind != "fpga-model")
        raise BenchError(f"build: config {request.get('config')!r} cannot run in a worker; accepted: {accepted}")
    return Session(config, spec)


def serve(requests: Iterable[str], reply: Callable[[dict], None]) -> int:
    """Answer ``requests`` (lines) one by one through ``reply``; returns the exit status."""
    s: Session | None = None
    for line in requests:
        expected = ("build",) if s is None else ("warmup", "round", "finish") if s.rounds else ("warmup", "round")
        try:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            op = msg.get("op") if isinstance(msg, dict) else None
            if op not in expected:
                raise BenchError(f"request {line.strip()[:80]!r} refused; expected a JSON object with op "
                                 f"{' or '.join(expected)}")
            if op == "build":
                s = session(msg)
                reply({"ready": True})
            elif op == "finish":
                reply({"record": s.record()})
                return 0
            else:
                getattr(s, op)()
                reply({"done": True})
        except NMQError as exc:
            reply({"error": " ".join(str(exc).split())})
            return 2
    return 0


def main() -> int:
    answers = sys.stdout
    # Whatever else prints (a library's notice) goes to stderr: stdout carries answers only.
    sys.stdout = sys.stderr
    return serve(sys.stdin, lambda msg: print(json.dumps(msg), file=answers, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
