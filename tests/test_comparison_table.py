"""benchmarks/comparison_table.py end to end at a tiny budget: a row trains and evaluates through the CLI in both
batch-norm modes with its cards, an algorithm that is not registered and a failing row say so in the table, and a
row with a result is not rerun."""

from __future__ import annotations

import json

import pytest

from tests.test_benchmarks import load, needs_small1


@needs_small1
def test_rows_through_the_cli_with_failures_and_missing_algorithms_said(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    table = load("comparison_table")
    out = tmp_path / "runs"
    md = tmp_path / "table.md"
    args = ["--algorithms", "maml", "notlanded", "--settings", "small1", "--iterations", "1", "--meta-batch-size", "2",
            "--tasks", "2", "--jobs", "1", "--out-dir", str(out), "--markdown", str(md)]
    assert table.main(args) == 0
    row = json.loads((out / "small1" / "maml" / "result.json").read_text())
    assert row["status"] == "ok" and row["train_wall_s"] > 0 and row["train_cpu_s"] > 0
    assert (out / "small1" / "maml" / "run" / "metrics.csv").is_file()  # the run folder stays in the row's
    assert {(r["shots"], r["batch_norm"]) for r in row["results"]} == {(1, "transductive"), (1, "support"),
                                                                       (5, "transductive"), (5, "support")}
    assert "batch norm: support-set statistics" in row["cards"]["support"]
    text = md.read_text()
    assert "| maml | 3 steps of SGD, inner lr 0.4 |" in text and "| notlanded | not landed in this session |" in text
    assert ("`python -m maml_lab train --task images --data images_background_small1.zip --algorithm maml "
            "--iterations 1") in text and "--bn transductive support" in text

    # a failed row is a row of the table; a row with a result is kept, not rerun
    failed = {**row, "status": "failed", "error": "train exit 1: something broke"}
    (out / "small1" / "maml" / "result.json").write_text(json.dumps(failed))
    assert table.main(args) == 0
    assert "| maml | **failed**: train exit 1: something broke |" in md.read_text()


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    table = load("comparison_table")
    assert table.main(["--data-dir", str(tmp_path), "--table-only"]) == 2
    assert capsys.readouterr().err.strip().startswith("not found: ")


@pytest.mark.parametrize("name, extra", [("reptile", ["--option", "reptile.meta_batch=0"]), ("maml", [])])
def test_one_budget_for_every_algorithm(name, extra):
    table = load("comparison_table")

    class Args:
        iterations, meta_batch_size, seed = 100, 16, 0

    flags = table.budget_flags(Args, name)
    assert flags[:6] == ["--iterations", "100", "--meta-batch-size", "16", "--seed", "0"]
    assert flags[-len(extra):] == extra if extra else "--option" not in flags
