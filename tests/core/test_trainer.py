import threading
import time

import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.analysis.evaluation import adaptation_curve
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer


def config(**kw):
    base = dict(iterations=50, meta_batch_size=5, val_every=10, val_tasks=20,
                algorithms=[AlgorithmConfig.defaults(n) for n in ("maml", "fomaml", "reptile", "pretrained")])
    base.update(kw)
    return ExperimentConfig(**base)


def test_trains_all_algorithms_on_the_same_tasks_and_reports():
    seen = []
    t = Trainer(config())
    state = t.run(callback=seen.append)
    assert state == "finished" and t.iteration == 50
    running = [p for p in seen if p["state"] == "running"]
    assert len(running) == 50
    assert set(running[-1]["metrics"]) == {"maml", "fomaml", "reptile", "pretrained"}
    assert running[-1]["tasks_per_s"] > 0
    assert all(len(r.log) == 50 and len(r.val_log) == 5 for r in t.runs.values())
    assert seen[-1]["state"] == "finished"


def test_same_seed_same_result_and_learning_happens():
    a, b = Trainer(config(iterations=300, val_every=0)), Trainer(config(iterations=300, val_every=0))
    a.run()
    b.run()
    for name in a.runs:
        for k in a.runs[name].params:
            assert torch.equal(a.runs[name].params[k], b.runs[name].params[k])
    h = a.runs["maml"].log.tail_rows()
    assert len(h) == 300 and h[-1] == a.runs["maml"].last_metrics and h[-1]["iteration"] == 300
    first = sum(m["post_loss"] for m in h[:30]) / 30
    last = sum(m["post_loss"] for m in h[-30:]) / 30
    assert last < first


def test_pause_resume_stop_from_another_thread():
    t = Trainer(config(iterations=10**6, val_every=0))
    states = []
    thread = threading.Thread(target=lambda: states.append(t.run()))
    thread.start()
    while t.iteration < 5:
        time.sleep(0.01)
    t.pause()
    time.sleep(0.1)
    frozen = t.iteration
    time.sleep(0.2)
    assert t.iteration <= frozen + 1 and t.state == "paused"
    t.resume()
    while t.iteration < frozen + 5:
        time.sleep(0.01)
    t.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert states == ["stopped"] and t.stop_reason == "stopped by the user"


def test_non_finite_loss_stops_with_reason_and_keeps_finite_params():
    cfg = config(iterations=200, val_every=0, algorithms=[AlgorithmConfig("maml", inner_lr=1e20)])
    t = Trainer(cfg)
    reports = []
    state = t.run(callback=reports.append)
    assert state == "diverged"
    assert "maml produced a non-finite loss" in t.stop_reason
    assert reports[-1]["state"] == "diverged" and reports[-1]["reason"] == t.stop_reason
    assert all(torch.isfinite(p).all() for p in t.runs["maml"].params.values())
    t.export("maml", __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "last_good.safetensors")


def test_adaptation_curve_reports_mean_and_ci_and_improves_with_steps():
    t = Trainer(config(iterations=400, val_every=0, algorithms=[AlgorithmConfig("maml")]))
    t.run()
    curve = adaptation_curve(t.model, t.family, t.runs["maml"].params, shots=10, max_steps=5, adaptation=0.01,
                             num_tasks=200)
    assert curve.loss_mean.shape == (6,) and curve.loss_ci95.shape == (6,)
    assert curve.loss_mean[1] < curve.loss_mean[0]
    assert (curve.loss_ci95 > 0).all()


def test_config_toml_round_trip_and_validation(tmp_path):
    cfg = config(seed=3, hidden=[20, 30])
    cfg.save_toml(tmp_path / "c.toml")
    back = ExperimentConfig.load_toml(tmp_path / "c.toml")
    assert back == cfg
    (tmp_path / "bad.toml").write_text("iterations = -1\n")
    with pytest.raises(ValueError, match=r"iterations = -1: expected an integer >= 1"):
        ExperimentConfig.load_toml(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("iterations = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        ExperimentConfig.load_toml(tmp_path / "broken.toml")
    (tmp_path / "unknown.toml").write_text("iteration = 5\n")
    with pytest.raises(ValueError, match="unknown config key"):
        ExperimentConfig.load_toml(tmp_path / "unknown.toml")


def test_trainer_records_bounded_parameter_paths():
    t = Trainer(config(iterations=300, val_every=0, algorithms=[AlgorithmConfig("maml")]), record_capacity=50)
    t.run()
    rec = t.recorders["maml"]
    assert 2 <= len(rec) < 50 and rec.iterations[-1] == 300 and rec.iterations[0] <= rec.every
    from maml_lab.core.analysis.trajectory import flatten

    assert (rec.array()[-1] == flatten(t.runs["maml"].params).astype("float32")).all()
    assert Trainer(config(iterations=5, val_every=0), record_every=0).recorders == {}
