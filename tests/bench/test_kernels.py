import json

import pytest

from nmq.backends.cpu.matmul import CpuBackend
from nmq.cli.main import main


@pytest.mark.parametrize("argv,words", [
    (["--shape", "3x"], ["--shape '3x'", "OUTxIN"]),
    (["--shapes", "square"], ["--shapes 'square'", "accepted: llama-7b"]),
    (["--batch", "0"], ["--batch '0'", "1..4096"]),
    (["--kernels", "nmq-2:4-int4,marlin"], ["unknown 'marlin'", "ort-matmulnbits"]),
    (["--paths", "w8a8"], ["--paths", "w4a16, w4a8"]),
    (["--layers", "0"], ["--layers 0"]),
    (["--runs", "9"], ["at least 10 runs"]),
    (["--threads", "0"], ["--threads 0"]),
])
def test_kernels_cli_refuses_bad_options_with_one_line(capsys, argv, words):
    assert main(["bench", "kernels", *argv, "--bandwidth", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nmq: error:") and "\n" not in err and all(w in err for w in words)


@pytest.mark.skipif(CpuBackend().unavailable_reason() is not None, reason="the nmq cpu backend is not built")
def test_kernels_records(capsys):
    assert main(["bench", "kernels", "--shape", "256x256", "--batch", "1,2", "--layers", "2", "--runs", "10",
                 "--warmup", "1", "--kernels", "nmq-2:4-int4,torch-fp32,onednn-fp32", "--paths", "w4a8",
                 "--bandwidth", "40", "--json", "--quiet"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["kernel"], r["path"], r["batch"]) for r in records] == [
        ("nmq-2:4-int4", "w4a8", 1), ("nmq-2:4-int4", "w4a8", 2), ("torch-fp32", "w4a16", 1), ("torch-fp32", "w4a16", 2),
        ("onednn-fp32", "w4a16", 1), ("onednn-fp32", "w4a16", 2)]
    for r in records:
        assert set(r) == {"kernel", "path", "batch", "shapes", "layers", "median_ms", "bytes", "floor_ms"}
        assert r["shapes"] == ["256x256"] and r["layers"] == 2 and r["median_ms"] > 0
    assert records[2]["bytes"] == records[4]["bytes"] == 2 * 256 * 256 * 4 > records[0]["bytes"]
