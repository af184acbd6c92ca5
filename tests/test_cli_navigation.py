"""2-D navigation from the command line: train, export, plain PyTorch rolls the exported policy out exactly as the
engine does, eval prints returns after policy-gradient steps; bad input gets one line and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from maml_lab.cli import main
from maml_lab.core.tasks.navigation import NavigationFamily

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


TINY = ["--meta-batch-size", "2", "--shots", "2", "--queries", "2", "--task-option", "horizon=10", "--quiet",
        "--threads", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nav")
    out = folder / "nav.safetensors"
    code = main(["train", "--task", "navigation", "--algorithm", "maml", "--iterations", "2", "--out", str(out),
                 "--run-dir", str(folder / "run"), *TINY])
    assert code == 0 and out.is_file()
    return out


def test_the_export_describes_the_environment_and_rolls_out_in_plain_pytorch(exported):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(exported))
    with safe_open(str(exported), framework="pt") as fh:
        meta = json.loads(fh.metadata()["maml_lab"])
    task, hyper = meta["task"], meta["hyperparameters"]
    assert task["name"] == "navigation" and task["horizon"] == 10 and task["max_speed"] == 0.1
    assert "distance" in task["reward"] and task["baseline"]["kind"] == "linear_feature"
    assert hyper["inner_lr"] == 0.5 and hyper["shots"] == 2 and meta["model"]["kind"] == "gaussian_mlp_policy"

    # plain PyTorch: the mean network is an nn.Sequential, the log std one more tensor
    assert meta["model"]["sizes"] == [2, 100, 100, 2] and meta["model"]["activation"] == "relu"  # the paper's
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    _rolls_out_as_the_engine(net, tensors, meta)


def test_hidden_widths_reach_the_exported_policy_and_plain_pytorch_rebuilds_it(tmp_path):
    """--hidden / --activation build the policy; the export records them (metadata `model`), and plain PyTorch
    rebuilds the network from that record alone."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "nav.safetensors"
    assert main(["train", "--task", "navigation", "--algorithm", "maml", "--iterations", "1", "--out", str(out),
                 "--run-dir", str(tmp_path / "run"), "--hidden", "12", "7", "--activation", "tanh", *TINY]) == 0
    tensors = load_file(str(out))
    with safe_open(str(out), framework="pt") as fh:
        meta = json.loads(fh.metadata()["maml_lab"])
    assert meta["model"]["sizes"] == [2, 12, 7, 2] and meta["model"]["activation"] == "tanh"
    assert tuple(tensors["0.weight"].shape) == (12, 2) and tuple(tensors["4.weight"].shape) == (2, 7)
    sizes, act = meta["model"]["sizes"], {"relu": nn.ReLU, "tanh": nn.Tanh}[meta["model"]["activation"]]
    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1])] + ([act()] if i < len(sizes) - 2 else [])
    _rolls_out_as_the_engine(nn.Sequential(*layers), tensors, meta)


def _rolls_out_as_the_engine(net, tensors, meta):
    net.load_state_dict({k: v for k, v in tensors.items() if k != "log_std"})
    log_std = tensors["log_std"]
    env = NavigationFamily(horizon=10)
    goal = torch.tensor([0.3, -0.2])
    noise = env.noise(seed=7, task_ids=torch.tensor([0]), call=0, num=3)
    engine = env.rollout(_policy(meta), {k: v.unsqueeze(0) for k, v in tensors.items()}, goal.view(1, 2), noise)
    with torch.no_grad():
        for n in range(3):
            pos = torch.zeros(2)
            for t in range(10):
                action = net(pos) + log_std.exp() * noise[0, n, t]
                assert torch.allclose(action, engine.actions[0, n, t], atol=1e-6)
                pos = pos + (0.1 * action).clamp(-0.1, 0.1)
                if bool(((pos - goal).abs() < 0.01).all()):
                    break


def _policy(meta):
    from maml_lab.core.models.build import build_model

    return build_model(meta["model"])


def test_eval_prints_returns_after_each_step_with_the_references(exported, capsys):
    assert main(["eval", str(exported), "--steps", "0", "1", "--tasks", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "average return" in out and "oracle" in out and "random init" in out
    rows = [line.split() for line in out.splitlines() if "+-" in line and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[1]) < 0 for r in rows)


def test_the_defaults_train_maml_by_trpo_and_the_pretrained_policy_by_adam(tmp_path, capsys):
    """The defaults, shortened only in episodes and batch (--iterations 2 of the default 50)."""
    from maml_lab.core.training.config import ExperimentConfig

    assert ExperimentConfig(task="navigation").iterations == 50
    out = tmp_path / "nav.safetensors"
    args = ["train", "--task", "navigation", "--algorithm", "maml", "pretrained", "--iterations", "2", "--out",
            str(out), "--run-dir", str(tmp_path / "run"), "--save-config", str(tmp_path / "c.toml"), *TINY]
    assert main(args) == 0
    config = ExperimentConfig.load_toml(tmp_path / "c.toml")
    maml, pretrained = config.algorithms
    assert (maml.outer_optimizer, maml.inner_lr) == ("trpo", 0.5)
    assert (pretrained.outer_optimizer, pretrained.meta_lr) == ("adam", 1e-3)
    capsys.readouterr()
    paths = [str(tmp_path / "nav-maml.safetensors"), str(tmp_path / "nav-pretrained.safetensors")]
    assert main(["eval", *paths, "--protocol", "paper", "--steps", "0", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "protocol paper" in text and "np.random.seed(1)" in text and "SGD 0.5 then 0.25" in text
    assert "pretrained: judged at its best first step size" in text
    # how each was trained, and where it differs from cbfinn/maml_rl
    assert "trained: maml: 1 inner policy-gradient step at 0.5" in text and "TRPO outer step (mean KL <= 0.01" in text
    assert "trained: pretrained: one policy for all goals, Adam 0.001" in text and "use_maml=False" in text
    rows = [line.split() for line in text.splitlines() if "+-" in line and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "0", "1"]
    # Adam on the surrogate stays one flag away
    args = ["train", "--task", "navigation", "--outer-optimizer", "adam", "--iterations", "1", "--run-dir",
            str(tmp_path / "run2"), "--save-config", str(tmp_path / "a.toml"), *TINY]
    assert main(args) == 0
    assert ExperimentConfig.load_toml(tmp_path / "a.toml").algorithms[0].outer_optimizer == "adam"


@pytest.mark.parametrize("extra, message", [
    (["--algorithm", "metasgd"], "sampled"),
    (["--task-option", "horizon=0"], "horizon"),
])
def test_invalid_navigation_settings_get_one_line_and_exit_2(tmp_path, capsys, extra, message):
    args = ["train", "--task", "navigation", "--iterations", "1", "--run-dir", str(tmp_path / "run"), *TINY, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_export_says_which_policy_of_its_run_it_is_and_eval_s_card_repeats_it(tmp_path, capsys):
    """With validation on (the family's default every 10 iterations; here every one) the export is the run's best by
    validation or the last iteration's; the CLI's last lines, the metadata and eval's card say which."""
    out = tmp_path / "nav.safetensors"
    args = ["train", "--task", "navigation", "--algorithm", "maml", "--iterations", "2", "--val-every", "1",
            "--out", str(out), "--run-dir", str(tmp_path / "run"), *TINY]
    assert main(args) == 0
    text = capsys.readouterr().out
    line = [t for t in text.splitlines() if "maml's export is" in t]
    assert len(line) == 1 and ("the run's best by validation: iteration 1 of 2" in line[0]
                               or "the last iteration's (2), also the best by validation" in line[0])
    from maml_lab.core.export import load_initialization

    meta = load_initialization(out)[1]
    assert meta["export"]["chosen"] in ("best", "last") and meta["export"]["last_iteration"] == 2
    assert main(["eval", str(out), "--steps", "0", "1", "--tasks", "3", "--threads", "1"]) == 0
    card = capsys.readouterr().out
    assert "  policy: " + line[0].split("maml's export is ")[1] in card
