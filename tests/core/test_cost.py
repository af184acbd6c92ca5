"""The cost meter (core/training/cost.py): what its memory measure sees, its fields in the Trainer's progress, the
messages, the CLI and the session, its extrapolation to more inner steps, that measuring changes no result, and
that it stays off the critical path (nothing measured inside the first iteration, within its budget after,
"estimating…" until then)."""

import io
from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.cost import (
    CostMeter,
    LiveTensorBytes,
    cost_brief,
    cost_details,
    cost_text,
    expected_cost,
    format_bytes,
    measure,
)
from maml_lab.core.training.metrics import COST_FIELDS
from maml_lab.core.training.trainer import Trainer
from maml_lab.lab.messages import Progress, RunProgress


def step_bytes(name, steps, model="mlp"):
    g = torch.Generator().manual_seed(0)
    if model == "mlp":
        net, loss, task = MLP([1, 32, 32, 1]), "mse", "sinusoid"
        batch = SinusoidFamily().sample(2, 10, 10, g)
    else:
        net, loss, task = Conv4(in_channels=1, image_size=8, ways=3, filters=4), "cross_entropy", "images"
        batch = TaskBatch(torch.rand(2, 3, 1, 8, 8, generator=g), torch.arange(3).repeat(2, 1),
                          torch.rand(2, 6, 1, 8, 8, generator=g), torch.arange(3).repeat_interleave(2).repeat(2, 1))
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in net.init_params(g).items())
    algo = make_algorithm(net, loss, AlgorithmConfig.defaults(name, task=task, inner_steps=steps), 10)
    algo.setup(params)
    _, seconds, used, kind = measure(lambda: algo.meta_step(params, batch, 0), "cpu")
    assert kind == "cpu" and seconds > 0
    return used


@pytest.mark.parametrize("model", ["mlp", "conv4"])
def test_second_order_maml_keeps_more_bytes_with_more_inner_steps_and_more_than_fomaml(model):
    maml = [step_bytes("maml", k, model) for k in (1, 2, 3)]
    fomaml = [step_bytes("fomaml", k, model) for k in (2, 3)]
    assert 0 < maml[0] < maml[1] < maml[2]
    # MAML keeps every inner step's graph for the second-order term; FOMAML does not
    assert fomaml[0] < maml[1] and fomaml[1] < maml[2]
    assert maml[2] - maml[1] > fomaml[1] - fomaml[0]


def test_live_tensor_bytes_counts_what_is_alive_at_once_not_what_was_ever_allocated():
    tracker = LiveTensorBytes()
    keep = []
    with tracker:
        for _ in range(200):  # 200 temporaries of 4 KB, one alive at a time
            torch.ones(1024).mul(2)
        keep.append(torch.zeros(25_000))  # 100 KB kept
        a = torch.ones(1000)
        a.add_(1)  # in place: nothing new
        a.view(10, 100)  # a view: nothing new
    tracker.sweep()
    assert 100_000 <= tracker.peak < 100_000 + 40 * 4096 + 4000
    assert tracker.current >= 100_000


def test_trainer_progress_carries_the_cost_fields_and_measuring_changes_nothing():
    config = ExperimentConfig(iterations=6, meta_batch_size=4, hidden=[8, 8], val_every=0,
                              algorithms=[AlgorithmConfig.defaults("maml", inner_steps=2),
                                          AlgorithmConfig.defaults("fomaml", inner_steps=2)])
    seen = []
    measured = Trainer(config, record_every=0)
    measured.cost.every, measured.cost.probe, measured.cost.budget = 2, True, None
    measured.run(callback=seen.append)
    plain = Trainer(config, record_every=0)
    plain.cost.enabled = False
    plain.run()
    for name in ("maml", "fomaml"):
        for a, b in zip(measured.runs[name].params.values(), plain.runs[name].params.values()):
            assert torch.equal(a, b)
    cost = seen[-1]["cost"]
    assert set(cost) == {"maml", "fomaml"}
    for name, c in cost.items():
        assert set(COST_FIELDS) <= set(c)
        assert c["memory"] == "cpu" and c["inner_steps"] == 2 and c["measured_at"] == 5
        assert c["step_s"] > 0 and c["step_bytes"] > 0 and c["inner_step_s"] is not None
        assert c["inner_step_bytes"] > 0 and c["forecast"] == "ready"
        log = measured.cost.logs[name]
        # memory due at steps 1, 3 and 5, measured after the second (none inside the first iteration), then at once;
        # the forecast once, after step 2
        assert log.count == 4 and [r["iteration"] for r in log.tail_rows()] == [2, 2, 3, 5]
    assert cost["maml"]["inner_step_bytes"] > cost["fomaml"]["inner_step_bytes"]
    assert Progress.from_trainer(seen[-1]).cost == cost
    # linear beyond the trained steps: the probe at 3, then one marginal step each
    c = cost["maml"]
    s4, b4 = expected_cost(c, 4)
    s5, b5 = expected_cost(c, 5)
    assert b5 - b4 == c["inner_step_bytes"] and b4 == c["probe_bytes"] + c["inner_step_bytes"]
    assert s5 - s4 == pytest.approx(c["inner_step_s"])
    assert expected_cost(c, 2) == (c["step_s"], c["step_bytes"]) and expected_cost(c, 1) == (None, None)


def test_the_pretrained_baseline_gets_no_inner_step_expectation():
    config = ExperimentConfig(iterations=2, meta_batch_size=4, hidden=[8, 8], val_every=0,
                              algorithms=[AlgorithmConfig.defaults("pretrained")])
    trainer = Trainer(config, record_every=0)
    trainer.cost.probe, trainer.cost.budget = True, None
    trainer.run()
    c = trainer.cost.summary()["pretrained"]
    assert c["step_bytes"] > 0 and c["inner_step_s"] is None and c["inner_step_bytes"] is None
    assert c["forecast"] == "none" and "inner step" not in cost_text(c)


def test_texts():
    c = {"step_s": 0.62, "step_bytes": 85_600_000, "memory": "cpu", "inner_steps": 1, "inner_step_s": 0.31,
         "inner_step_bytes": 41_000_000, "probe_s": 1.2, "probe_bytes": 105_000_000, "measured_at": 1}
    assert cost_text(c) == "620 ms, 85.6 MB/step, +1 inner step +310 ms +41 MB"
    assert cost_brief(c) == "620 ms, 85.6 MB"
    details = cost_details("MAML", c)
    assert "1 inner step" in details and "5: 2.13 s, 228 MB" in details and "CPU tensors" in details
    assert cost_text({}) == "estimating…" and format_bytes(None) == "?" and format_bytes(999) == "999 B"
    early = {"step_s": 0.62, "step_bytes": None, "memory": "cpu", "inner_steps": 1, "inner_step_s": None,
             "inner_step_bytes": None, "probe_s": None, "probe_bytes": None, "forecast": "estimating"}
    assert cost_text(early) == "620 ms/step, memory estimating…, +1 inner step estimating…"
    assert cost_brief(early) == "620 ms, estimating…"
    assert cost_details("MAML", early).splitlines() == [
        "MAML: 620 ms per meta-step at 1 inner step; memory estimating…", "  more inner steps: estimating…"]
    assert "estimating" not in cost_details("MAML", early, ended=True)
    assert cost_text({**early, "step_bytes": 85_600_000}) == "620 ms, 85.6 MB/step, +1 inner step estimating…"
    assert RunProgress("running", 1, 2, 0.0, 0.0, 0.0, cost={"maml": c}).cost["maml"] is c


def test_cli_progress_and_summary_show_the_cost(tmp_path, capsys, monkeypatch):
    from maml_lab import cli

    err = io.StringIO()
    monkeypatch.setattr(cli.sys, "stderr", err)
    c = {"step_s": 0.01, "step_bytes": 2_000_000, "memory": "cpu", "inner_steps": 1, "inner_step_s": 0.005,
         "inner_step_bytes": 500_000, "probe_s": 0.02, "probe_bytes": 2_500_000, "measured_at": 1}
    cli._Progress(quiet=False)(Progress("running", 1, 10, 5.0, 1.0, 0.1, "", {"maml": {"pre_loss": 1.0,
                                                                                      "post_loss": 0.5}}, {},
                                        {"maml": c}))
    assert "maml 10 ms, 2 MB/step, +1 inner step +5 ms +500 KB" in err.getvalue()
    early = {"step_s": 0.01, "step_bytes": None, "memory": "cpu", "inner_steps": 1, "forecast": "estimating"}
    cli._Progress(quiet=False)(Progress("running", 1, 10, 5.0, 1.0, 0.1, "", {"maml": {"pre_loss": 1.0,
                                                                                      "post_loss": 0.5}}, {},
                                        {"maml": early}))
    assert "maml 10 ms/step, memory estimating…, +1 inner step estimating…" in err.getvalue()
    monkeypatch.undo()
    assert cli.main(["train", "--task", "sinusoid", "--algorithm", "maml", "--iterations", "3", "--hidden", "8", "8",
                     "--meta-batch-size", "2", "--inner-steps", "2", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().err
    assert "maml cost:" in out and "per meta-step at 2 inner steps" in out and "expected with more inner steps" in out
    # what runs before the first iteration is named as it starts, in order
    assert out.index("building the model…") < out.index("first meta-iteration…") < out.index("[1/3]")


def test_session_reports_the_cost(tmp_path):
    from maml_lab.lab.session import TrainingSession

    config = ExperimentConfig(iterations=2, meta_batch_size=2, hidden=[8, 8], val_every=0,
                              algorithms=[AlgorithmConfig.defaults("mamlpp", inner_steps=2)])
    session = TrainingSession.create(config, run_dir=tmp_path / "run")
    messages = []
    session.run(callback=messages.append)
    assert session.cost["mamlpp"]["step_bytes"] > 0 and messages[-1].cost == session.cost


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_is_the_peak_the_step_allocates():
    device = torch.device("cuda")
    _, _, used, kind = measure(lambda: torch.ones(1_000_000, device=device).sum(), device)
    assert kind == "cuda" and used >= 4_000_000
    with pytest.raises(ValueError):
        CostMeter(every=0)


def small_trainer(names=("maml", "fomaml"), iterations=6, meta_batch_size=4, **meter):
    config = ExperimentConfig(iterations=iterations, meta_batch_size=meta_batch_size, hidden=[8, 8], val_every=0,
                              algorithms=[AlgorithmConfig.defaults(n, inner_steps=2) for n in names])
    trainer = Trainer(config, record_every=0)
    trainer.cost.probe = True
    for key, value in meter.items():
        setattr(trainer.cost, key, value)
    return trainer


def test_nothing_is_measured_before_or_inside_the_first_iteration(monkeypatch):
    trainer = small_trainer(budget=None)  # no budget: everything as early as the meter allows
    events = []
    enter = LiveTensorBytes.__enter__

    def spy(self):
        events.append(("dispatch", trainer.iteration))
        return enter(self)

    monkeypatch.setattr(LiveTensorBytes, "__enter__", spy)
    trainer.run(callback=lambda p: events.append((p["state"], p["iteration"])))
    first_end = events.index(("running", 1))
    assert events[0] == ("starting", 0)  # the first iteration is named as it starts
    assert all(e[0] != "dispatch" for e in events[:first_end])
    assert ("dispatch", 1) in events[first_end:]  # right after it, inside the second
    # every measurement ran after its algorithm's second real step
    assert trainer.cost.pieces and all(before >= 2 for _, before, _ in trainer.cost.pieces)
    assert {name for name, _, _ in trainer.cost.pieces} == {"maml", "fomaml"}


class FakeClock:
    """One second per call: every real step and every piece takes the same number of 'seconds', whatever the
    machine is doing."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_the_forecast_waits_for_its_budget_and_says_estimating_until_then():
    clock = FakeClock()
    trainer = small_trainer(names=("maml",), iterations=1000, clock=clock, ratio_clock=clock, finish_seconds=0)
    meter = trainer.cost
    seen = []
    trainer.run(callback=lambda p: seen.append((p["iteration"], p["cost"], meter.spent, meter.trained)))
    costs = [(i, c["maml"]) for i, c, _, _ in seen if c]
    ready = [i for i, c in costs if c["forecast"] == "ready"]
    assert ready and ready[0] > 2  # not at once: the budget is a share of the training time so far
    for i, c in costs:
        if i < ready[0]:
            assert c["inner_step_s"] is None and c["forecast"] == "estimating"
            assert "+1 inner step estimating…" in cost_text(c)
            assert "more inner steps: estimating…" in cost_details("MAML", c)
        else:
            assert c["inner_step_s"] is not None and "estimating" not in cost_text(c)
    # within budget at every message: the meter's own time never passes its share by more than one piece
    largest = max(3 * 9 * 2, 3.0)  # a piece: one clock tick per measure() call, 9 rounds of 3 at most
    assert all(spent <= meter.budget * trained + largest for _, _, spent, trained in seen)
    assert meter.spent <= meter.budget * meter.trained + largest


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "mamlpp"])
def test_the_forecast_from_task_slices_agrees_with_measuring_the_whole_batch(name):
    """The old probe measured the whole meta-batch at S, S+1 and S+2; the slices of one and two tasks, extrapolated,
    must give the same bytes."""
    from maml_lab.core.training.cost import _variant

    trainer = small_trainer(names=(name,), iterations=3, meta_batch_size=8, budget=None)
    trainer.run()
    c = trainer.cost.summary()[name]
    assert c["forecast"] == "ready"
    run = trainer.runs[name]
    batch = trainer.sample_batch()
    whole = {}
    for steps in (2, 3, 4):
        copy, theta = _variant(run.algorithm, steps, run.params)
        whole[steps] = measure(lambda c=copy, t=theta: c.meta_step(t, batch, 3), "cpu")[2]
    assert c["step_bytes"] == pytest.approx(whole[2], rel=0.15)
    assert c["probe_bytes"] == pytest.approx(whole[3], rel=0.15)
    # within a quarter, or 2% of the step's bytes: FOMAML keeps no graph of its steps, so one more costs a few bytes
    assert c["inner_step_bytes"] == pytest.approx(whole[4] - whole[3], rel=0.25, abs=0.02 * whole[3])
    # one more inner step costs time, and the expectation does not shrink with the steps
    s3, b3 = expected_cost(c, 3)
    s5, b5 = expected_cost(c, 5)
    assert 0 < s3 <= s5 and b3 <= b5


def test_a_short_run_completes_a_cheap_forecast_and_leaves_a_costly_one():
    # default budget: nothing fits in two tiny steps; an allowance far above what the pieces take (the default 1 s
    # can be exceeded on a loaded machine, which is what it is for) makes the run's end complete them
    trainer = small_trainer(names=("maml",), iterations=2, finish_seconds=600.0)
    trainer.run()
    assert trainer.cost.summary()["maml"]["forecast"] == "ready"  # finished: completed, it is cheap
    trainer = small_trainer(names=("maml",), iterations=2, finish_seconds=0.0)
    trainer.run()
    c = trainer.cost.summary()["maml"]
    assert c["forecast"] == "estimating" and c["step_bytes"] is None and trainer.cost.pending("maml") > 0
