"""Hostile and mistaken input (issue 22, classes 2, 3 and 7): crafted exports, configs of the wrong type or size,
extreme numbers. Through the CLI in subprocesses: exit code 2 (or 1 for a diverged run), no traceback, one line
naming the key, the value and what was expected. Then fast unit tests of the validation layer itself."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from maml_lab.core import validation
from maml_lab.core.export import FORMAT, METADATA_KEY


def run_cli(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "maml_lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=_env())


def _env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


# each class of input runs once through a real subprocess (what a user sees, tracebacks included); the other cases
# of a class run `main` in this process, the same code path, much faster on a busy machine
IN_SUBPROCESS = {"inner_lr_text", "algorithms_string", "huge_widths", "deep_array", "metadata_list", "huge_model",
                 "policy_as_sinusoid", "conv4_other_ways", "hyperparameters_list"}


def run_main(capsys, *args):
    """`maml-lab ARGS` in this process, as a CompletedProcess (an uncaught exception fails the test by itself)."""
    from maml_lab.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def run(capsys, name, *args):
    return run_cli(*args) if name in IN_SUBPROCESS else run_main(capsys, *args)


def refused_in_one_line(r, *fragments, code=2):
    """The process ended with `code`, printed no traceback, and said why in one line on stderr."""
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == code, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- configs --------------------------------------------------------------------------------------------------------
DEEP = "x = " + "[" * 3000 + "]" * 3000 + "\n"

BAD_CONFIGS = {
    "inner_lr_text": ('[algorithms.maml]\ninner_lr = "fast"\n',
                      ['algorithms.maml.inner_lr = "fast"', "expected a positive number"]),
    "meta_batch_float": ("meta_batch_size = 2.5\n", ["meta_batch_size = 2.5", "expected an integer >= 1"]),
    "algorithms_ints": ("algorithms = [1, 2]\n", ["algorithms[0] = 1", "expected an algorithm name"]),
    "inner_steps_text": ('[algorithms.maml]\ninner_steps = "two"\n', ['inner_steps = "two"', "expected an integer"]),
    "hidden_float": ("hidden = [40.5, 40]\n", ["hidden[0] = 40.5", "expected an integer >= 1"]),
    "hidden_text": ('hidden = "40"\n', ['hidden = "40"', "expected a non-empty list of integers"]),
    "hidden_empty": ("hidden = []\n", ["hidden = []", "non-empty list"]),
    "rotations_text": ('task = "images"\nrotations = "yes"\n', ['rotations = "yes"', "expected true or false"]),
    "horizon_bool": ('task = "navigation"\n[task_options]\nhorizon = true\n',
                     ["task_options.horizon = true", "expected an integer"]),
    "horizon_zero": ('task = "navigation"\n[task_options]\nhorizon = 0\n',
                     ["task_options.horizon = 0", "expected an integer >= 1"]),
    "algorithms_string": ('algorithms = "reptile"\n', ['algorithms = "reptile"', 'algorithms = ["reptile"]']),
    "algorithm_not_table": ("[algorithms]\nmaml = 3\n", ["algorithms.maml = 3", "expected a table"]),
    "seed_bool": ("seed = true\n", ["seed = true", "expected an integer"]),
    "iterations_inf": ("iterations = inf\n", ["iterations = inf", "expected an integer"]),
    "inner_lr_nan": ("[algorithms.maml]\ninner_lr = nan\n", ["inner_lr = nan", "positive number"]),
    "meta_lr_bool": ("[algorithms.maml]\nmeta_lr = true\n", ["meta_lr = true", "positive number"]),
    "task_int": ("task = 3\n", ["task = 3", "expected a text"]),
    "dtype_unknown": ('dtype = "float16"\n', ['dtype = "float16"', '"float32", "float64"']),
    "activation_unknown": ('activation = "swish"\n', ['activation = "swish"', "expected one of"]),
    "step_weights_text": ('[algorithms.maml]\nstep_loss_weights = "1"\n', ["step_loss_weights", "list of numbers"]),
    "negative_queries": ("queries = -3\n", ["queries = -3", ">= 1"]),
    "options_not_table": ('[algorithms.maml]\noptions = "x"\n', ["options", "expected a table"]),
    "huge_widths": ("hidden = [200000, 200000]\n", ["MLP 1-200000-200000-1", "this needs about", "the machine has"]),
    "huge_meta_batch": ("meta_batch_size = 1000000000\n", ["meta-batches of 1000000000", "this needs about"]),
    "huge_queries": ("queries = 1000000000\n", ["this needs about"]),
    "huge_validation": ("val_tasks = 1000000000\n", ["1000000000 validation tasks", "this needs about"]),
    "huge_horizon": ('task = "navigation"\n[task_options]\nhorizon = 100000000\n',
                     ["100000000 steps", "this needs about"]),
    "huge_images": ('task = "images"\nimage_size = 4096\n', ["4096x4096", "this needs about"]),
    "deep_array": (DEEP, ["nested more than"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_in_one_line(tmp_path, capsys, name):
    text, fragments = BAD_CONFIGS[name]
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text)
    r = run(capsys, name, "train", "--config", str(cfg), "--iterations", "1", "--quiet",
            "--run-dir", str(tmp_path / "run"))
    refused_in_one_line(r, *fragments)
    assert not (tmp_path / "run").exists()  # nothing was created for a refused config


def test_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_bytes(b"iterations = 3\n\xff\xfe\n")
    refused_in_one_line(run_main(capsys, "train", "--config", str(cfg), "--quiet"), "not valid TOML")


@pytest.mark.parametrize("flags, fragments", [
    (["--task", "navigation", "--task-option", "horizon=true"], ["task_options.horizon = true"]),
    (["--task", "navigation", "--task-option", "horizon=" + "[" * 500 + "]" * 500], ["nested more than"]),
    (["--hidden", "100000", "100000"], ["this needs about"]),
    (["--task", "images", "--image-size", "4096"], ["4096x4096", "this needs about"]),
    (["--algorithm", "mamlpp", "--option", "mamlpp.learn_lrs=3"], ["learn_lrs"]),
], ids=["horizon-flag", "deep-flag", "huge-hidden-flag", "huge-image-size-flag", "plugin-option-type"])
def test_bad_flags_go_through_the_same_validation(tmp_path, capsys, flags, fragments):
    name = "deep_array" if "nested more than" in fragments else ""  # the deep one also in a subprocess
    r = run(capsys, name, "train", *flags, "--iterations", "1", "--quiet", "--run-dir", str(tmp_path / "run"))
    refused_in_one_line(r, *fragments)
    assert not (tmp_path / "run").exists()


# -- exports --------------------------------------------------------------------------------------------------------
def _mlp_tensors(sizes=(1, 40, 40, 1)):
    from maml_lab.core.models.mlp import MLP

    return dict(MLP(sizes).init_params(torch.Generator().manual_seed(0)))


def _policy_tensors():
    from maml_lab.core.rl.policy import GaussianMLPPolicy

    return dict(GaussianMLPPolicy((2, 8, 2)).init_params(torch.Generator().manual_seed(0)))


def _conv4_tensors(ways=5):
    from maml_lab.core.models.conv4 import Conv4

    return dict(Conv4(in_channels=1, image_size=28, ways=ways).init_params(torch.Generator().manual_seed(0)))


MLP_SPEC = {"kind": "mlp", "sizes": [1, 40, 40, 1], "activation": "relu"}
POLICY_SPEC = {"kind": "gaussian_mlp_policy", "sizes": [2, 8, 2], "activation": "relu", "init_log_std": 0.0}
CONV4_SPEC = {"kind": "conv4", "in_channels": 1, "image_size": 28, "ways": 5, "filters": 64, "downsample": "maxpool"}


def _meta(**changes):
    meta = {"format": FORMAT, "format_version": 1, "algorithm": "maml", "model": MLP_SPEC,
            "task": {"name": "sinusoid"}, "hyperparameters": {"inner_lr": 0.01, "shots": 10}, "iterations": 1,
            "metrics": {}}
    meta.update(changes)
    return meta


def _write(path, tensors, metadata):
    raw = metadata if isinstance(metadata, str) else json.dumps(metadata)
    save_file(tensors, str(path), metadata={METADATA_KEY: raw})
    return path


BAD_EXPORTS = {
    "metadata_list": (_mlp_tensors, "[1, 2]", ["metadata", "expected a table"]),
    "metadata_string": (_mlp_tensors, '"maml"', ["metadata", '"maml"', "expected a table"]),
    "metadata_number": (_mlp_tensors, "3", ["expected a table"]),
    "hyperparameters_list": (_mlp_tensors, _meta(hyperparameters=[1, 2]), ["hyperparameters = [1, 2]", "a table"]),
    "task_string": (_mlp_tensors, _meta(task="sinusoid"), ['task = "sinusoid"', "expected a table"]),
    "task_name_int": (_mlp_tensors, _meta(task={"name": 3}), ["task.name = 3", "expected a text"]),
    "model_list": (_mlp_tensors, _meta(model=[1, 40, 1]), ["no model description"]),
    "model_kind_int": (_mlp_tensors, _meta(model={"kind": 5}), ["model.kind = 5", "expected a text"]),
    "model_sizes_text": (_mlp_tensors, _meta(model={"kind": "mlp", "sizes": "abc"}), ['model.sizes = "abc"']),
    "model_sizes_bool": (_mlp_tensors, _meta(model={"kind": "mlp", "sizes": [1, True, 1]}), ["model.sizes[1]"]),
    "version_bool": (_mlp_tensors, _meta(format_version=True), ["format version true"]),
    "iterations_negative": (_mlp_tensors, _meta(iterations=-1), ["iterations = -1", ">= 0"]),
    "extra_tensors_text": (_mlp_tensors, _meta(extra_tensors="abc"), ['extra_tensors = "abc"', "list of texts"]),
    "inner_lr_text": (_mlp_tensors, _meta(hyperparameters={"inner_lr": "fast"}),
                      ['hyperparameters.inner_lr = "fast"', "expected a positive number"]),
    "shots_float": (_mlp_tensors, _meta(hyperparameters={"shots": 2.5}), ["hyperparameters.shots = 2.5"]),
    "amplitude_text": (_mlp_tensors, _meta(task={"name": "sinusoid", "amplitude": "ab"}), ["task.amplitude"]),
    "huge_model": (_mlp_tensors, _meta(model={"kind": "mlp", "sizes": [1, 200000, 200000, 1]}),
                   ["40,000,800,001 parameters", "this needs about 149 GB", "the machine has"]),
    "policy_as_sinusoid": (_policy_tensors, _meta(model=POLICY_SPEC), ["gaussian_mlp_policy", "'sinusoid'"]),
    "policy_as_images": (_policy_tensors, _meta(model=POLICY_SPEC, task={"name": "images"}),
                         ["gaussian_mlp_policy", "'images'", "conv4"]),
    "mlp_as_navigation": (_mlp_tensors, _meta(task={"name": "navigation"}), ["MLP 1-40-40-1", "'navigation'"]),
    "mlp_as_images": (_mlp_tensors, _meta(task={"name": "images"}), ["MLP 1-40-40-1", "'images'"]),
    "conv4_as_sinusoid": (_conv4_tensors, _meta(model=CONV4_SPEC), ["conv4", "'sinusoid'", "mlp"]),
    "conv4_other_ways": (_conv4_tensors, _meta(model=CONV4_SPEC, task={"name": "images", "ways": 20}),
                         ["20 ways", "5-way"]),
    "conv4_other_size": (_conv4_tensors, _meta(model=CONV4_SPEC, task={"name": "images", "input_shape": [1, 84, 84]}),
                         ["[1, 84, 84]", "[1, 28, 28]"]),
    "conv4_preprocessing_size": (_conv4_tensors, _meta(model=CONV4_SPEC, task={
        "name": "images", "preprocessing": {"size": [100000, 100000]}}), ["preprocessing.size", "28x28"]),
    "unknown_task": (_mlp_tensors, _meta(task={"name": "chess"}), ["unknown task family 'chess'"]),
    "navigation_huge_horizon": (_policy_tensors, _meta(model=POLICY_SPEC, task={"name": "navigation",
                                                                               "horizon": 10 ** 9}),
                                ["1000000000 steps", "this needs about"]),
    "navigation_horizon_text": (_policy_tensors, _meta(model=POLICY_SPEC, task={"name": "navigation",
                                                                               "horizon": "long"}),
                                ['task.horizon = "long"', "expected an integer"]),
}


@pytest.mark.parametrize("name", sorted(BAD_EXPORTS))
def test_crafted_export_is_refused_in_one_line(tmp_path, capsys, name):
    tensors, metadata, fragments = BAD_EXPORTS[name]
    path = _write(tmp_path / "crafted.safetensors", tensors(), metadata)
    r = run(capsys, name, "eval", str(path), "--tasks", "2")
    refused_in_one_line(r, *fragments)


def test_crafted_exports_are_refused_by_the_app_import_too(tmp_path):
    """The app imports through load_initialization and adaptation_from_metadata: the same checks, as one message."""
    from maml_lab.core.export import InitializationError, load_initialization

    for name in ("metadata_list", "hyperparameters_list", "task_string", "huge_model", "policy_as_sinusoid"):
        tensors, metadata, fragments = BAD_EXPORTS[name]
        path = _write(tmp_path / f"{name}.safetensors", tensors(), metadata)
        with pytest.raises(InitializationError) as info:
            load_initialization(path, with_extras=True)
        assert "\n" not in str(info.value) and all(f in str(info.value) for f in fragments)


def test_pt_sidecar_that_is_a_list_is_refused(tmp_path, capsys):
    path = tmp_path / "init.pt"
    torch.save(_mlp_tensors(), path)
    (tmp_path / "init.pt.json").write_text("[1, 2, 3]")
    refused_in_one_line(run_main(capsys, "eval", str(path), "--tasks", "2"), "expected a table")


def test_eval_refuses_an_evaluation_that_cannot_fit(tmp_path, capsys):
    path = _write(tmp_path / "ok.safetensors", _mlp_tensors(), _meta())
    r = run_main(capsys, "eval", str(path), "--tasks", "600", "--queries", "1000000000")
    refused_in_one_line(r, "evaluating ok.safetensors", "this needs about")


# -- extreme numbers ------------------------------------------------------------------------------------------------
def test_navigation_with_an_absurd_inner_lr_ends_as_diverged_not_an_internal_assert(tmp_path):
    r = run_cli("train", "--task", "navigation", "--inner-lr", "1e30", "--iterations", "3", "--meta-batch-size", "2",
                "--shots", "2", "--queries", "2", "--hidden", "8", "--threads", "1", "--val-every", "0",
                "--run-dir", str(tmp_path / "run"))
    assert "INTERNAL ASSERT" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1 and "training stopped" in r.stderr and "non-finite" in r.stderr


def test_linear_baseline_of_non_finite_rollouts_is_nan_for_that_task_only():
    from maml_lab.core.rl.pg import linear_baseline

    obs = torch.zeros(2, 3, 4, 2)
    obs[0] = float("nan")
    mask = torch.ones(2, 3, 4)
    returns = torch.randn(2, 3, 4)
    out = linear_baseline(obs, mask, returns)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


# -- the validator itself -------------------------------------------------------------------------------------------
def test_check_value_types_and_ranges():
    check, Rule = validation.check_value, validation.Rule
    assert check("c", "k", 3, float, Rule(above=0)) == 3.0 and isinstance(check("c", "k", 3, float), float)
    assert check("c", "k", (1, 2), list[int]) == [1, 2]
    assert check("c", "k", None, int | None) is None
    for value, hint, r in [(True, int, None), (2.5, int, None), (True, float, None), (float("inf"), float, None),
                           ("1", int, None), ("ab", list[str], None), (1, bool, None), (0, int, Rule(min=1)),
                           (0.0, float, Rule(above=0)), ("c", str, Rule(choices=("a", "b"))), ([], list[int],
                                                                                           Rule(min_items=1)),
                           (10 ** 400, float, None), (None, int, None), ([1], dict, None)]:
        with pytest.raises(validation.InputError):
            check("config", "key", value, hint, r)


def test_messages_name_where_the_key_the_value_and_the_expectation():
    with pytest.raises(validation.InputError) as info:
        validation.check_value("config", "inner_lr", "fast", float, validation.Rule(above=0))
    assert str(info.value) == 'config: inner_lr = "fast": expected a positive number'
    with pytest.raises(validation.InputError) as info:
        validation.check_value("config", "hidden", [40.5, 40], list[int], validation.Rule(min=1))
    assert str(info.value) == "config: hidden[0] = 40.5: expected an integer >= 1"
    assert len(validation.show(list(range(1000)))) <= 60


def test_check_like_follows_the_declared_default():
    assert validation.check_like("c", "k", 3, 1.5) == 3.0
    for value, default in [(True, 3), (3, True), (3, "text"), ("x", [1]), (1.5, 2)]:
        with pytest.raises(validation.InputError):
            validation.check_like("c", "k", value, default)


def test_toml_depth_ignores_brackets_in_strings_and_comments():
    assert validation.toml_depth('a = "[[[[["\n# [[[[\nb = [[1], [2]]\nc = \'\'\'[[[\'\'\'\n[t]\n') == 2
    with pytest.raises(validation.TooDeepError):
        validation.parse_toml(DEEP, "deep.toml")
    assert validation.parse_toml("x = [[1]]", "ok.toml") == {"x": [[1]]}


def test_memory_check_says_how_much_is_needed_and_available():
    gib = 2 ** 30
    with pytest.raises(validation.MemoryLimitError, match=r"x: this needs about 160 GB; the machine has 24 GB"):
        validation.check_memory(160 * gib, "x", available=24 * gib)
    validation.check_memory(gib, "x", available=24 * gib)
    assert validation.total_memory() > 0


def _documented_train_commands() -> list[list[str]]:
    """Every `maml-lab train` / `python -m maml_lab train` command in the README and docs/*.md (continuation lines
    joined, comments dropped), as argument lists."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    commands = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
        for match in re.finditer(r"(?:maml-lab|python -m maml_lab) train( [^`\n]*)?", text):
            line = (match.group(1) or "").split("#")[0]
            try:
                args = shlex.split(line)
            except ValueError:
                continue
            if any(a in ("--resume", "--config") or "NAME" in a or a.startswith("<") for a in args):
                continue
            commands.append(args)
    return commands


def test_defaults_and_documented_recipes_pass_on_a_laptop(monkeypatch):
    """Estimates err high, but not so high that the defaults or the docs' recipes are refused on a laptop: 8 GB
    for everything but mini-ImageNet (84x84 RGB, where validating 100 tasks of 80 images at once is estimated at
    about 13 GB), 16 GB for that."""
    from maml_lab.cli import UsageError, _config_from_args, build_parser

    documented = _documented_train_commands()
    assert len(documented) >= 5
    recipes = [[], ["--task", "images"], ["--task", "navigation"], ["--task", "images", "--preset", "paper"],
               ["--task", "images", "--ways", "20", "--meta-batch-size", "16"],
               ["--task", "images", "--ways", "5", "--shots", "5"],
               ["--algorithm", "maml", "fomaml", "reptile", "pretrained", "metasgd", "mamlpp", "anil", "boil"],
               *documented]
    for flags in recipes:
        gb = 16 if "84" in flags else 8
        monkeypatch.setattr(validation, "total_memory", lambda gb=gb: gb * 2 ** 30)
        try:
            args = build_parser().parse_args(["train", *flags])
        except (UsageError, SystemExit):  # a fragment (an ellipsis, a placeholder) or `--help`, not a recipe
            continue
        _config_from_args(args)


def test_checkpoint_header_schema():
    ok = {"format": "x", "format_version": 2, "iteration": 5, "config": {}, "runs": {}}
    assert validation.check_checkpoint_header(ok) is ok
    for bad in ([1, 2], {**ok, "iteration": "5"}, {**ok, "config": [1]}, {**ok, "runs": "x"}):
        with pytest.raises(validation.InputError):
            validation.check_checkpoint_header(bad)


def test_algorithm_and_experiment_configs_use_the_schema():
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    assert AlgorithmConfig(inner_lr=1).inner_lr == 1.0  # an integer where a number is expected is fine
    with pytest.raises(ValueError, match=r'config: algorithms.maml.inner_lr = "fast": expected a positive number'):
        AlgorithmConfig(inner_lr="fast")
    with pytest.raises(ValueError, match=r"config: rotations = 1: expected true or false"):
        ExperimentConfig(rotations=1)
    with pytest.raises(ValueError, match=r'algorithms = \["reptile"\]'):
        ExperimentConfig.from_dict({"algorithms": "reptile"})
    with pytest.raises(ValueError, match="expected a table"):
        ExperimentConfig.from_dict([1, 2])
