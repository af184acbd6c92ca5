"""The benchmark scripts of the time-to-accuracy and GPU work: they run end to end (tiny budgets), the reference MAML
they compare against computes the same meta-gradient as the engine, and the GPU check bows out cleanly without CUDA."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.images import ImageTaskFamily
from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing

ROOT = Path(__file__).resolve().parents[1]
SMALL1 = ROOT.parent / "shared" / "omniglot" / "images_background_small1.zip"
needs_small1 = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str):
    key = f"maml_lab_benchmarks_{name}"
    if key not in sys.modules:  # registered before running: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def tiny_case(dtype=torch.float64):
    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 1, 14, 14)) < 0.25).astype(np.uint8) * 255
    images = ImageSet("random", [f"c{i}" for i in range(10)], None, pixels, np.arange(0, 61, 6),
                      Preprocessing(size=(14, 14)))
    batch = ImageTaskFamily(images, ways=5).sample(3, 1, 2, torch.Generator().manual_seed(1), dtype=dtype)
    model = Conv4(1, 14, 5, filters=6)
    g = torch.Generator().manual_seed(2)
    # non-trivial batch-norm parameters, so every term of the second-order gradient matters
    theta = OrderedDict((k, v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype))
                        for k, v in model.init_params(g, dtype=dtype).items())
    return model, theta, batch


@pytest.mark.parametrize("name, overrides", [
    ("maml", {}),
    ("fomaml", {}),
    ("maml", {"inner_steps": 2, "step_loss_weights": [0.3, 0.7]}),
])
def test_the_reference_maml_computes_the_engines_meta_gradient_in_float64(name, overrides):
    tta = load("time_to_accuracy")
    model, theta, batch = tiny_case()
    config = AlgorithmConfig.defaults(name, task="images", **overrides)
    engine_params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    engine = make_algorithm(model, "cross_entropy", config)
    expected, _, _, _ = engine.meta_gradient(engine_params, batch, engine.first_order)
    ref_params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    reference = tta.ReferenceMAML(model, make_algorithm(model, "cross_entropy", config), ref_params)
    got = reference.meta_gradient(batch)
    assert len(got) == len(expected)
    for k, e, r in zip(theta, expected, got):
        torch.testing.assert_close(r, e, rtol=1e-9, atol=1e-11, msg=k)
    assert any(float(e.abs().max()) > 1e-3 for e in expected)  # not a vacuous comparison


def test_the_reference_steps_with_adam_at_the_engines_schedule():
    tta = load("time_to_accuracy")
    model, theta, batch = tiny_case()
    config = AlgorithmConfig.defaults("maml", task="images", meta_lr_schedule="cosine")
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo = make_algorithm(model, "cross_entropy", config, total_iterations=10)
    reference = tta.ReferenceMAML(model, algo, params)
    reference.step(batch, 5)
    assert reference.optimizer.param_groups[0]["lr"] == pytest.approx(algo.meta_lr(5))
    assert algo.meta_lr(5) < config.meta_lr
    assert any(not torch.equal(params[k].detach(), theta[k]) for k in theta)


@needs_small1
def test_time_to_accuracy_end_to_end_with_a_tiny_target_and_budget(capsys):
    tta = load("time_to_accuracy")
    rc = tta.main(["--data", str(SMALL1), "--target", "0.3", "--max-iterations", "4", "--check-every", "2",
                   "--eval-tasks", "10", "--meta-batch-size", "2", "--seeds", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "evaluation card" in out and "10 held-out tasks" in out
    rows = re.findall(r"^\s+0 (engine|reference)\s+(yes|no)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert [r[0] for r in rows] == ["engine", "reference"]
    checks = re.findall(r"(engine|reference) seed 0: iteration (\d+), [\d.]+ s training, held-out 5-way 1-shot "
                        r"([\d.]+)%", out)
    for name, reached, iterations, wall, cpu in rows:
        mine = [(int(i), float(a)) for n, i, a in checks if n == name]
        # it stops at the first check at or above the target, else at the budget
        assert mine and mine[-1][0] == int(iterations) and all(a < 30.0 for _, a in mine[:-1])
        assert (reached == "yes") == (mine[-1][1] >= 30.0)
        assert int(iterations) == 4 or reached == "yes"
        assert float(wall) > 0 and float(cpu) > 0


@needs_small1
def test_time_to_accuracy_interleaved_runs_follow_the_same_trajectories_as_back_to_back(capsys):
    """Taking turns must not couple the runs: each has its own generator, so the checks are the same either way."""
    tta = load("time_to_accuracy")
    trends = {}
    for order in ("interleaved", "sequential"):
        rc = tta.main(["--data", str(SMALL1), "--target", "0.99", "--max-iterations", "4", "--check-every", "2",
                       "--eval-tasks", "10", "--meta-batch-size", "2", "--seeds", "0", "--order", order])
        assert rc == 0
        out = capsys.readouterr().out
        checks = re.findall(r"(engine|reference) seed 0: iteration (\d+), [\d.]+ s training, held-out 5-way 1-shot "
                            r"([\d.]+)%", out)
        trends[order] = sorted(checks)
        if order == "interleaved":  # turns: engine, reference, engine, reference
            assert [c[0] for c in checks] == ["engine", "reference", "engine", "reference"]
    assert trends["interleaved"] == trends["sequential"] and len(trends["sequential"]) == 4


def test_time_to_accuracy_settings_reach_the_experiment_and_the_algorithm():
    from types import SimpleNamespace

    from maml_lab.core.training.config import ExperimentConfig

    tta = load("time_to_accuracy")
    args = SimpleNamespace(algorithm="maml", set=["meta_lr=0.005", "queries=7", "meta_lr_schedule=constant",
                                                  "iterations=321"], meta_batch_size=4, data=Path("x.zip"),
                           device="cpu")
    config = tta.make_config(args, seed=3)
    algo = config.algorithm("maml")
    assert (config.queries, config.iterations, config.meta_batch_size, config.seed) == (7, 321, 4, 3)
    assert algo.meta_lr == 0.005 and algo.meta_lr_schedule == "constant"
    default = tta.make_config(SimpleNamespace(algorithm="maml", set=None, meta_batch_size=None, data=Path("x.zip"),
                                              device="cpu"), seed=0)
    assert default.iterations == ExperimentConfig(task="images").iterations  # the schedule spans the default run
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        tta.parse_settings(["meta_lr"])


def test_time_to_accuracy_refuses_bad_input(capsys, tmp_path):
    tta = load("time_to_accuracy")
    assert tta.main(["--data", str(tmp_path / "missing.zip")]) == 2
    assert "image set not found" in capsys.readouterr().err
    if SMALL1.is_file():
        assert tta.main(["--data", str(SMALL1), "--target", "95"]) == 2
        assert "--target" in capsys.readouterr().err


@needs_small1
def test_profile_iteration_prints_every_phase_summing_to_the_iteration(capsys):
    profile = load("profile_iteration")
    rc = profile.main(["--data", str(SMALL1), "--iterations", "2", "--warmup", "1", "--rare-repeats", "1",
                       "--meta-batch-size", "2", "--val-tasks", "2", "--val-budget", "0.04"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = dict(re.findall(r"^(\S[^\d\n]*?)\s+(-?[\d.]+)\s+-?[\d.]+%", out, re.M))
    for phase in profile.PHASES:
        assert phase in rows, phase
    total = float(re.search(r"^total\s+([\d.]+)", out, re.M).group(1))
    assert sum(float(v) for k, v in rows.items() if k != "total") == pytest.approx(total, abs=0.05)
    assert float(rows["meta-step"]) > 0 and "within a 4% budget" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA branch")
def test_gpu_check_says_in_one_line_that_there_is_no_cuda_and_exits_0():
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and result.stderr == ""


def test_the_app_takes_a_device_and_refuses_cuda_without_it_in_one_line(capsys):
    from maml_lab.app import build_parser, main

    assert build_parser().parse_args(["--device", "cpu"]).device == "cpu"
    assert build_parser().parse_args([]).device is None  # the experiment's own device (auto)
    if torch.cuda.is_available():
        pytest.skip("the no-CUDA refusal")
    assert main(["--device", "cuda", "--screenshot", "never-written.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
    assert not Path("never-written.png").exists()


def read_export(path: Path) -> tuple[dict, dict]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["maml_lab"]), {k: f.get_tensor(k).shape for k in f.keys()}


@needs_small1
@pytest.mark.parametrize("flags, ways, shots, meta_batch, cells", [
    (["--ways", "20"], 20, 1, 16, ["20-way 1-shot"]),  # the paper's 20-way meta-batch when none is given
    (["--shots", "5", "--meta-batch-size", "2", "--meta-lr", "0.002", "--meta-lr-schedule", "cosine"], 5, 5, 2,
     ["5-way 1-shot", "5-way 5-shot"]),
])
def test_omniglot_small1_meta_trains_the_ways_and_shots_it_is_given(capsys, tmp_path, flags, ways, shots, meta_batch,
                                                                    cells):
    bench = load("omniglot_small1")
    rc = bench.main(["--data", str(SMALL1), "--iterations", "1", "--algorithms", "maml", "--eval-tasks", "2",
                     "--trend-every", "0", "--out-dir", str(tmp_path), *flags])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{ways}-way {shots}-shot training, meta-batch {meta_batch}" in out
    assert f"evaluation card: {ways}-way" in out and "2 held-out tasks" in out
    summary = re.search(r"^maml: (.*) \(1 iterations", out, re.M).group(1)
    assert re.findall(r"(\d+-way \d+-shot): [\d.]+% \+- [\d.]+%", summary) == cells
    meta, shapes = read_export(tmp_path / f"omniglot_small1-{ways}w{shots}s-maml.safetensors")
    assert meta["hyperparameters"]["shots"] == shots and meta["hyperparameters"]["meta_batch_size"] == meta_batch
    assert meta["model"]["ways"] == ways and shapes["13.weight"][0] == ways
    if "--meta-lr" in flags:  # the outer step as asked, whatever the algorithm's default
        assert meta["hyperparameters"]["meta_lr"] == 0.002 and meta["hyperparameters"]["meta_lr_schedule"] == "cosine"
        assert "outer Adam 0.002 (cosine)" in out


@needs_small1
def test_omniglot_small1_refuses_shots_the_heldout_characters_cannot_supply_before_training(capsys):
    bench = load("omniglot_small1")
    # Omniglot has 20 drawings per character: 6 shots + 15 queries need 21
    assert bench.main(["--data", str(SMALL1), "--shots", "6", "--algorithms", "maml"]) == 2
    captured = capsys.readouterr()
    assert "6 shots + 15 queries need 21 images per class" in captured.err and "iteration" not in captured.out
    assert bench.default_eval_shots(5, 1) == [1, 5] and bench.default_eval_shots(20, 1) == [1]
    assert bench.paper_meta_batch(5) == 32 and bench.paper_meta_batch(20) == 16


def test_reproduce_sinusoid_trains_every_algorithm_at_one_budget_and_tables_the_chosen_steps(capsys, tmp_path):
    bench = load("reproduce_sinusoid")
    names = ["maml", "fomaml", "reptile", "mamlpp", "metasgd", "anil", "boil", "pretrained"]
    rc = bench.main(["--iterations", "3", "--algorithms", *names, "--step-loss-weights", "0.5", "0.5",
                     "--steps", "0", "1", "10", "--eval-tasks", "4", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| method | 0 steps | 1 step | 10 steps | paper |" in out
    rows = re.findall(r"^\| (\w+) \| (.+?) \| (.+?) \| (.+?) \| .* \|$", out, re.M)
    assert [r[0] for r in rows] == ["method", *names]
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert result["iterations"] == 3 and result["steps"] == [0, 1, 10]
    for row in result["rows"]:
        assert set(row["mse"]) == {"0", "1", "10"} and row["train_cpu_s"] > 0
        assert "4 held-out tasks" in row["card"]["text"]
    cpu = dict(re.findall(r"(\w+) [\d.]+ s \(([\d.]+) ms/it\)", out))
    assert set(cpu) == set(names) and all(float(v) > 0 for v in cpu.values())
    # before adaptation every algorithm predicts with its theta alone: step 0 is not step 1
    maml = next(r for r in result["rows"] if r["algorithm"] == "maml")
    assert maml["mse"]["0"] != maml["mse"]["1"]


def test_reproduce_sinusoid_marks_a_diverged_mean():
    bench = load("reproduce_sinusoid")
    assert bench.mse_cell(0.5234, 0.061) == "0.52 +- 0.06"
    assert bench.mse_cell(float("nan"), float("nan")) == "nan (diverged)"
    assert bench.mse_cell(1275.4, 2013.2) == "1.28e+03 +- 2.01e+03"
