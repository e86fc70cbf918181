"""What a tensor file or checkpoint holds and what each part costs in storage.

>>> import nmq, tempfile, torch
>>> path = tempfile.mkdtemp() + "/w.safetensors"
>>> nmq.compress_weight(torch.randn(256, 512), metadata="index").save(path)
>>> s = summarize(path)
>>> s["compressed"]["bits_per_weight"], s["tensors"][0]["pattern"]
(3.125, '2:4')
"""

from __future__ import annotations

from pathlib import Path

from ..format.load import load_file
from ..format.spec import FLOAT_BITS
from ..format.storage import Storage, total
from .checkpoint import read_record


def summarize(path: str | Path, validate: bool = True) -> dict:
    """``{"path", "tensors": [...], "compressed": {...}, "checkpoint": {...}}`` for a file or checkpoint dir.

    ``validate=False`` reads the header only (shapes and dtypes are all the
    accounting needs): for a file just written, without reading it back whole.
    """
    path = Path(path)
    if path.is_dir():
        record = read_record(path)
        tensor_file = path / record["tensors"]
    else:
        record, tensor_file = None, path
    contents = load_file(tensor_file, data=validate)
    rows, comp, everything = [], [], []
    for name, t in sorted(contents.compressed.items()):
        s = t.storage()
        comp.append(s)
        everything.append(s)
        rows.append({"name": name, "kind": "nmq", **t.header(), "storage": s.to_dict()})
    for name, d in sorted(contents.dense.items()):
        s = Storage(weights=d.numel(), fields={"dense": d.numel() * d.element_size() * 8})
        everything.append(s)
        rows.append({"name": name, "kind": "dense", "shape": list(d.shape), "dtype": str(d.dtype).replace("torch.", ""),
                     "storage": s.to_dict()})
    return {
        "path": str(path),
        "recipe": record["recipe"] if record else None,
        "tensors": rows,
        "compressed": total(comp).to_dict(),
        "checkpoint": total(everything).to_dict(),
    }


def format_table(summary: dict) -> str:
    """A human-readable storage table of :func:`summarize` output."""
    lines = [f"{summary['path']}"]
    if summary.get("recipe"):
        r = summary["recipe"]
        sym = "symmetric" if r["symmetric"] else "asymmetric"
        values = "16-bit floats (prune only)" if r["bits"] == FLOAT_BITS else f"int{r['bits']} g{r['group_size']} {sym}"
        lines.append(f"recipe: {r['pattern']} {values}, metadata {r['metadata']}, method {r['method']}")
    head = f"{'tensor':<44} {'shape':>13} {'format':>18} {'bits/w':>7} {'KiB':>10} {'x fp16':>7}"
    lines += [head, "-" * len(head)]
    for row in summary["tensors"]:
        s = row["storage"]
        shape = "x".join(map(str, row["shape"]))
        if row["kind"] == "nmq":
            if "value_dtype" in row:
                fmt = f"{row['pattern']} {row['value_dtype']}"
            else:
                fmt = f"{row['pattern']} int{row['bits']} g{row['group_size']}{'' if row['symmetric'] else ' asym'}"
            if row["padded_in"] != row["shape"][1]:
                shape += f" (K->{row['padded_in']})"
        else:
            fmt = f"dense {row['dtype']}"
        lines.append(f"{_short(row['name'], 44):<44} {shape:>13} {fmt:>18} {s['bits_per_weight']:>7.3f} "
                     f"{s['bytes'] / 1024:>10.1f} {s['ratio_vs_fp16']:>7.2f}")
    lines.append("-" * len(head))
    for label in ("compressed", "checkpoint"):
        s = summary[label]
        if not s["weights"]:
            continue
        parts = ", ".join(f"{k} {v['bits_per_weight']:.3f}" for k, v in s["fields"].items())
        lines.append(f"{label:<11} {s['weights']:>12,} weights  {s['bytes'] / 2**20:>9.2f} MiB  "
                     f"{s['bits_per_weight']:.3f} bits/weight  {s['ratio_vs_fp16']:.2f}x vs fp16  "
                     f"{s['ratio_vs_fp32']:.2f}x vs fp32")
        lines.append(f"{'':<11} bits/weight by field: {parts}")
    return "\n".join(lines)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
