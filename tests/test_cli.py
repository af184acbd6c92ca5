import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.cli import main


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "maml_lab", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_train_then_eval_exactly_as_documented(tmp_path):
    out = tmp_path / "init.safetensors"
    r = run_cli("train", "--task", "sinusoid", "--algorithm", "maml", "--iterations", "200", "--meta-batch-size",
                "25", "--shots", "10", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and set(load_file(out)) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight",
                                                     "4.bias"}
    r = run_cli("eval", str(out), "--shots", "5", "--steps", "1", "5", "10", "--tasks", "100")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()[:2] in ("0 ", "1 ", "5 ", "10")]
    assert [row[0] for row in rows] == ["0", "1", "5", "10"]
    assert all(row[2] == "+-" and float(row[1]) > 0 and float(row[3]) > 0 for row in rows)


def test_several_algorithms_toml_config_and_flags(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('iterations = 20\nmeta_batch_size = 4\n[algorithms.reptile]\ninner_steps = 3\n'
                   '[algorithms.pretrained]\n')
    out = tmp_path / "init.pt"
    assert main(["train", "--config", str(cfg), "--meta-lr", "0.002", "--out", str(out), "--quiet",
                 "--save-config", str(tmp_path / "effective.toml")]) == 0
    assert (tmp_path / "init-reptile.pt").is_file() and (tmp_path / "init-pretrained.pt").is_file()
    effective = (tmp_path / "effective.toml").read_text()
    assert "inner_steps = 3" in effective and "meta_lr = 0.002" in effective
    assert main(["train", "--algorithm", "maml", "--first-order", "--iterations", "3", "--quiet",
                 "--out", str(tmp_path / "fo.safetensors")]) == 0
    assert main(["eval", str(tmp_path / "fo.safetensors"), "--tasks", "10"]) == 0
    assert "fomaml" in capsys.readouterr().out


def test_step_loss_weights_flag_reaches_the_algorithm_config():
    from maml_lab.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--inner-steps", "2", "--step-loss-weights", "0.5", "0.5"])
    assert _config_from_args(args).algorithm("maml").step_loss_weights == [0.5, 0.5]


def test_preset_fills_what_flags_leave_unset():
    """--preset paper gives the MAML paper's Omniglot settings for every algorithm, under explicit flags."""
    from maml_lab.cli import _config_from_args, build_parser
    from maml_lab.core.tasks.registry import task_family

    paper = task_family("images").presets["paper"]
    args = build_parser().parse_args(["train", "--task", "images", "--preset", "paper", "--algorithm", "maml",
                                      "fomaml", "--meta-batch-size", "8", "--meta-lr", "0.005"])
    config = _config_from_args(args)
    assert config.meta_batch_size == 8  # the flag wins
    assert config.iterations == paper["experiment"]["iterations"] == 60000
    for name in ("maml", "fomaml"):
        algo = config.algorithm(name)
        assert algo.meta_lr == 0.005  # the flag wins
        assert algo.meta_lr_schedule == "constant" and algo.inner_lr == 0.4 and algo.test_inner_steps == 3


def test_apply_preset_keeps_what_is_set_and_refuses_unknown_names():
    from maml_lab.core.training.config import apply_preset

    data = {"task": "images", "iterations": 10, "algorithms": {"maml": {"inner_lr": 0.1}, "anil": {}}}
    out = apply_preset(data, "images", "paper")
    assert out["iterations"] == 10 and out["meta_batch_size"] == 32
    assert out["algorithms"]["maml"]["inner_lr"] == 0.1 and out["algorithms"]["anil"]["inner_lr"] == 0.4
    assert data["algorithms"]["anil"] == {}  # the input is not changed
    with pytest.raises(ValueError, match="unknown preset 'fast'.*paper"):
        apply_preset(data, "images", "fast")


@pytest.mark.parametrize("args, message", [
    (["train", "--inner-lr", "-0.1"], "must be a positive number"),
    (["train", "--task", "sinusoid", "--preset", "paper"], "unknown preset 'paper' for task family 'sinusoid'"),
    (["train", "--shots", "0"], "must be >= 1"),
    (["train", "--algorithm", "mamll"], "invalid choice"),
    (["train", "--device", "quantum"], "unknown device"),
    (["train", "--config", "missing.toml"], "config file not found"),
    (["train", "--out", "x.zip"], "--out must end in .safetensors or .pt"),
    (["train", "--step-loss-weights", "0.5", "0.5"], "one weight per inner step"),
    (["eval", "missing.safetensors"], "file not found"),
    (["eval"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gets_one_line_and_exit_code_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_corrupt_file_in_eval_is_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    r = run_cli("eval", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("maml-lab: error: bad.safetensors is not a readable safetensors file")
    assert len(r.stderr.strip().splitlines()) == 1


def test_eval_of_a_float64_export_runs_in_float64(tmp_path, capsys):
    """The bug: eval on an initialization trained with --dtype float64 died with a dtype mismatch traceback."""
    out = tmp_path / "f64.safetensors"
    assert main(["train", "--iterations", "3", "--meta-batch-size", "2", "--dtype", "float64", "--quiet",
                 "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert load_file(out)["0.weight"].dtype == torch.float64
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "10", "--steps", "1", "2"]) == 0
    table = capsys.readouterr().out
    assert "SGD, inner lr 0.01" in table and len([line for line in table.splitlines() if "+-" in line]) == 3


def test_eval_rebuilds_the_sinusoid_family_from_its_metadata(tmp_path):
    """The phase fallback in eval was 3.14159; the family now comes from the export's own description."""
    import math

    from maml_lab.core.tasks.registry import task_family

    family = task_family("sinusoid").from_description({"name": "sinusoid"})
    assert family.phase == (0.0, math.pi)
    family = task_family("sinusoid").from_description({"name": "sinusoid", "amplitude": [1.0, 2.0],
                                                       "phase": [0.0, 1.0], "x_range": [-1.0, 1.0]})
    assert (family.amplitude, family.phase, family.x_range) == ((1.0, 2.0), (0.0, 1.0), (-1.0, 1.0))


def test_repeated_option_flags_add_up():
    from maml_lab.cli import build_parser

    args = build_parser().parse_args(["train", "--option", "reptile.inner_batch=0", "--option", "reptile.meta_batch=0",
                                      "fomaml_momentum.momentum=0.5", "--task-option", "a=1", "--task-option", "b=2"])
    assert args.option == ["reptile.inner_batch=0", "reptile.meta_batch=0", "fomaml_momentum.momentum=0.5"]
    assert args.task_option == ["a=1", "b=2"]
    assert build_parser().parse_args(["train"]).option == []


def test_every_registered_algorithm_trains_from_a_toml_config(tmp_path, monkeypatch):
    """A TOML config naming every algorithm (with its options) round-trips and trains from `train --config`."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.algorithms.registry import algorithm_class, algorithm_names
    from maml_lab.core.training.config import ExperimentConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    assert {"mamlpp", "metasgd", "anil", "boil", "reptile", "pretrained", "protonet"} <= set(algorithm_names())
    # the sinusoids for every algorithm that regresses, the built-in glyphs for those that only classify
    classifiers = [n for n in algorithm_names() if algorithm_class(n).classification_only]
    runs = {"sinusoid": ([n for n in algorithm_names() if n not in classifiers], {"hidden": [8, 8]}),
            "images": (classifiers, {"image_size": 14, "queries": 1})}
    for task, (names, extra) in runs.items():
        config = ExperimentConfig(task=task, algorithms=[AlgorithmConfig.defaults(n, task=task) for n in names],
                                  iterations=2, meta_batch_size=2, val_every=0, **extra)
        path = tmp_path / f"every-{task}.toml"
        config.save_toml(path)
        loaded = ExperimentConfig.load_toml(path)
        assert loaded.to_dict() == config.to_dict()
        out = tmp_path / f"{task}.safetensors"
        assert main(["train", "--config", str(path), "--out", str(out), "--quiet"]) == 0
        for name in names:  # one algorithm: --out itself
            path = out if len(names) == 1 else tmp_path / f"{task}-{name}.safetensors"
            assert path.stat().st_size > 0, name
