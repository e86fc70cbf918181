import base64
import json
import re

from nmq.cli.main import main


def plots(page):
    found = dict(re.findall(r"data-plot='(\w+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page))
    return {k: base64.b64decode(v) for k, v in found.items()}


def test_report_with_no_results_says_what_is_missing(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sections"] == ["storage"] and set(r["missing"]) == {"kernels", "accuracy", "hardware", "e2e"}
    page = (tmp_path / "r" / "report.html").read_text()
    assert set(plots(page)) == {"storage"} and plots(page)["storage"].startswith(b"\x89PNG")
    assert page.count("class=missing") == 4 and "nmq bench accuracy --json" in page
    assert "2:4 int4 g128 rank" in page


def test_report_renders_every_result_present(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    (res / "kernels.json").write_text(json.dumps([
        {"kernel": k, "path": "w4a8", "batch": b, "median_ms": ms * b ** 0.3, "floor_ms": 4.0, "bytes": 1, "shapes": [], "layers": 3}
        for k, ms in (("nmq-2:4-int4", 5.0), ("ort-matmulnbits", 8.0)) for b in (1, 128)]))
    (res / "accuracy.json").write_text(json.dumps([{"row": "dense", "perplexity": 6.8, "seconds": 0.1},
                                                   {"row": "2:4-wanda", "perplexity": 9.1, "seconds": 3.0}]))
    (res / "e2e.json").write_text(json.dumps([{"config": "nmq-2:4-int4", "backend": "cpu", "ms_per_token": 50.0,
                                               "tokens_per_s": 20.0, "prefill_ms": 300.0, "peak_rss_gb": 3.1}]))
    (res / "hw-explore.json").write_text(json.dumps({"points": [{"lut": 1000, "tokens_per_s": 3.0}, {"lut": 5000, "tokens_per_s": 9.0}],
                                                     "pareto": [{"lut": 1000, "tokens_per_s": 3.0}, {"lut": 5000, "tokens_per_s": 9.0}]}))
    assert main(["report", "--results", str(res), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    got = plots(page)
    assert set(got) == {"storage", "kernels", "accuracy", "hardware", "e2e"}
    assert all(png.startswith(b"\x89PNG") and len(png) > 2000 for png in got.values())
    assert "class=missing" not in page
    md = (tmp_path / "r" / "report.md").read_text()
    assert "2:4-wanda" in md and "nmq-2:4-int4" in md
