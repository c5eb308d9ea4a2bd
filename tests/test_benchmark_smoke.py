"""Every benchmark script runs end to end with a tiny budget and writes only where it is told.

compare.py (with compare_report.py) has its own smoke test (test_compare_smoke.py), gpu_check.sh its own
(test_gpu_settings.py).
The scripts run in this process (as ``python benchmarks/<script>.py`` would) to skip a fresh interpreter's
import time; each writes into ``tmp_path`` and the test checks nothing appeared under the bundled assets.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_thread")


def assets_snapshot() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "assets").rglob("*")}


def run_script(name: str, args: list[str], monkeypatch) -> None:
    """Run benchmarks/<name> as __main__ with ``args``, as the command line would."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.syspath_prepend(str(ROOT))
    before = assets_snapshot()
    runpy.run_path(str(BENCH / name), run_name="__main__")
    assert assets_snapshot() == before, "a benchmark wrote into the bundled assets"


def test_speed(monkeypatch, capsys):
    run_script("speed.py", ["--num-steps", "3", "--repeats", "1", "--batch-size", "1", "--threads", "1",
                            "--estimators", "rlr", "truncated-bp"], monkeypatch)
    out = capsys.readouterr().out
    assert "rlr" in out and "truncated-bp" in out


def test_memory(monkeypatch, capsys):
    run_script("memory.py", ["--steps", "3", "4", "--batch-size", "1", "--threads", "1", "--estimators", "rlr", "full-bp"],
               monkeypatch)
    out = capsys.readouterr().out
    assert "rlr" in out and "full-bp" in out


def test_estimators_analytic_and_model(monkeypatch, capsys):
    run_script("estimators.py", ["analytic", "--repeats", "20", "--batch-size", "4"], monkeypatch)
    assert "rlr-paper" in capsys.readouterr().out
    run_script("estimators.py", ["model", "--repeats", "2", "--num-steps", "3", "--batch-size", "1", "--threads", "1",
                                 "--estimators", '["rlr", "full-bp"]'], monkeypatch)
    assert "full-bp" in capsys.readouterr().out


def test_cv_surrogate(monkeypatch, capsys):
    run_script("cv_surrogate.py", ["--set", "num_steps=6", "--exits", "2", "--jumps", "1", "--batch", "2",
                                   "--exit-draws", "1", "--threads", "1"], monkeypatch)
    assert "jumps=1" in capsys.readouterr().out


def test_star_demo(monkeypatch, tmp_path):
    run_script("star_demo.py", ["--steps", "1", "--seeds", "2", "--batch-size", "2", "--threads", "1",
                                "--set", "num_steps=4", "--out", str(tmp_path)], monkeypatch)
    result = json.loads((tmp_path / "star_demo.json").read_text())
    assert result["iterations"] == 1 and "clean_star_fraction" in result["after"]
    assert (tmp_path / "before_after.png").stat().st_size > 0


def test_star_supervised(monkeypatch, tmp_path, capsys):
    run_script("star_supervised.py", ["--steps", "2", "--num-steps", "3", "--out", str(tmp_path / "after.png")], monkeypatch)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert (tmp_path / "after.png").is_file()


def test_star_landscape(monkeypatch, capsys):
    run_script("star_landscape.py", [], monkeypatch)
    assert "preset reward" in capsys.readouterr().out


def test_sd_scale_predicted_table(monkeypatch, tmp_path):
    run_script("sd_scale.py", ["--steps", "10", "--models", "sd15", "--batches", "1", "--out", str(tmp_path)], monkeypatch)
    assert "sd15" in (tmp_path / "sd_scale.md").read_text().lower()
    assert json.loads((tmp_path / "predicted.json").read_text())["rows"]


def test_tiny_load(monkeypatch, capsys):
    run_script("tiny_load.py", ["--repeats", "1", "--threads", "1", "--images", "4"], monkeypatch)
    assert "median" in capsys.readouterr().out.lower()


def test_long_run(monkeypatch, tmp_path, capsys):
    run_script("long_run.py", ["--iterations", "2", "--eval-every", "1", "--eval-images", "16", "--batch-size", "2",
                               "--num-steps", "3", "--tasks", "saturation", "--estimators", "truncated-bp",
                               "--variants", "plain", "--out", str(tmp_path / "out"), "--work-dir",
                               str(tmp_path / "work")], monkeypatch)
    record = json.loads((tmp_path / "out" / "runs.jsonl").read_text())
    assert [e["iteration"] for e in record["evals"]] == [0, 1, 2]
    assert record["evals"][0]["diversity"] == 1.0 and record["space"] == "tiny-clip embeddings"
    assert (tmp_path / "out" / "saturation.png").is_file() and "saturation-truncated-bp-plain" in capsys.readouterr().out
