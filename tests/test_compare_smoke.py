"""benchmarks/compare.py with a tiny budget: every new task builds its reward, runs, evaluates and reports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def test_compare_runs_the_composition_tasks_and_resumes(tmp_path, one_thread):
    sys.path.insert(0, str(ROOT))  # the spawned workers import benchmarks.compare from the parent's sys.path
    try:
        run_and_check(tmp_path)
    finally:
        sys.path.remove(str(ROOT))


def run_and_check(tmp_path):
    from benchmarks import compare

    argv = ["--out", str(tmp_path), "--budget", "0.5", "--seeds", "1", "--lrs", "0.01", "--workers", "1",
            "--num-steps", "4", "--batch-size", "2", "--estimators", "rlr", "refl", "--tasks", "star", "size-small"]
    compare.main(argv)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert not [r for r in runs if "error" in r], [r["error"] for r in runs if "error" in r]
    assert {(r["reward"], r["estimator"]) for r in runs} == {(t, e) for t in ("star", "size-small") for e in ("rlr", "refl")}
    for run in runs:
        assert len(run["evals"]) == 5 and run["estimator_options"] and run["commit"]
        assert run["lr"] == (0.003 if run["reward"] == "size-small" else 0.01)  # the task's own lr
        assert all(c["graph_memory_mb"] > 0 for c in run["curve"])
    report = (tmp_path / "compare.md").read_text()
    assert "## star" in report and "## size-small" in report and "graph MB" in report
    compare.main(argv)  # resumes: nothing new to run
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(runs)
