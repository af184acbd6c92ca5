"""Metrics in bounded memory: MetricsLog (the Trainer's) and MetricsHistory (the app's), and the one CSV format."""

import math

import numpy as np
import pytest

from maml_lab.core.algorithms import AlgorithmConfig
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.metrics import CSV_HEADER, TRAIN_FIELDS, VAL_FIELDS, MetricsLog, chunk_from_logs
from maml_lab.core.training.runs import RunFolder, RunLogger
from maml_lab.core.training.trainer import Trainer
from maml_lab.lab.metrics_history import MetricsHistory

pytestmark = pytest.mark.usefixtures("one_thread")


def true_bin_means(its, values, width):
    """Reference: the mean of each bin k = iterations k*width+1 .. (k+1)*width, by a plain loop."""
    sums, counts = {}, {}
    for it, v in zip(its.tolist(), values.tolist()):
        if math.isfinite(v):
            k = (max(it, 1) - 1) // width
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return np.array([sums[k] / counts[k] for k in sorted(sums)])


def test_a_million_rows_stay_in_a_fixed_size_with_exact_bin_means():
    n, capacity, tail = 10**6, 512, 100
    rng = np.random.default_rng(0)
    its = np.arange(1, n + 1)
    pre, post = rng.random(n), rng.random(n) * its
    log = MetricsLog(TRAIN_FIELDS, capacity=capacity, tail=tail)
    empty = log.nbytes()
    for start in range(0, n, 100_000):  # in chunks, as the app receives them
        stop = start + 100_000
        log.extend(its[start:stop], pre_loss=pre[start:stop], post_loss=post[start:stop])
    assert len(log) == n and log.nbytes() == empty  # nothing grew
    assert log.width == 2048 and (n - 1) // log.width < capacity  # the bins merged pairwise to fit
    bins = log.bins()
    assert len(bins["iteration"]) <= capacity and bins["iteration"][-1] == n and bins["rows"].sum() == n
    np.testing.assert_allclose(bins["pre_loss"], true_bin_means(its, pre, log.width), rtol=1e-12)
    np.testing.assert_allclose(bins["post_loss"], true_bin_means(its, post, log.width), rtol=1e-12)
    assert np.isnan(bins["pre_accuracy"]).all() and not log.reported("pre_accuracy")
    x, y = log.series("post_loss", max_points=100)  # the plots' point budget: weighted means of whole bins
    assert len(x) <= 100 and x[-1] == n
    size = int(np.ceil(len(bins["iteration"]) / 100))
    assert y[0] == pytest.approx(post[: size * log.width].mean(), rel=1e-12)
    tail_cols = log.tail_columns()
    assert tail_cols["iteration"].tolist() == list(range(n - tail + 1, n + 1))
    assert np.array_equal(tail_cols["post_loss"], post[-tail:])
    assert log.last == {"iteration": n, "pre_loss": pre[-1], "post_loss": post[-1]}


def test_rows_appended_one_by_one_match_the_bulk_path_and_survive_a_state_round_trip():
    rng = np.random.default_rng(1)
    values = rng.random((5000, 2))
    one = MetricsLog(VAL_FIELDS, capacity=64, tail=30, block=7)
    for i, (a, b) in enumerate(values, start=1):
        one.append({"iteration": 10 * i, "val_pre_loss": float(a), "val_post_loss": float(b)})
    bulk = MetricsLog(VAL_FIELDS, capacity=64, tail=30)
    bulk.extend(10 * np.arange(1, 5001), val_pre_loss=values[:, 0], val_post_loss=values[:, 1])
    for k in ("iteration", "rows", "val_pre_loss", "val_post_loss"):
        np.testing.assert_allclose(one.bins()[k], bulk.bins()[k], rtol=1e-12)
    assert one.last == bulk.last == {"iteration": 50000, "val_pre_loss": values[-1, 0],
                                     "val_post_loss": values[-1, 1]}
    assert one.tail_rows() == bulk.tail_rows() and len(one.tail_rows()) == 30
    copy = MetricsLog(VAL_FIELDS, capacity=64, tail=30, block=7)
    copy.load_state_dict(one.state_dict())
    assert copy == one
    for log in (one, copy):  # the unfolded rows come back too: both continue identically
        for i in range(5001, 5020):
            log.append({"iteration": 10 * i, "val_pre_loss": 0.5, "val_post_loss": 0.25})
    assert copy == one and copy.last == one.last


def test_trainer_last_metrics_and_validation_come_from_the_log():
    cfg = ExperimentConfig(iterations=25, meta_batch_size=2, val_every=10, val_tasks=4, seed=3,
                           algorithms=[AlgorithmConfig.defaults("maml")])
    t = Trainer(cfg, record_every=0)
    seen = []
    t.run(callback=lambda p: seen.append(p["metrics"].get("maml")))
    run = t.runs["maml"]
    last = [m for m in seen if m][-1]
    assert run.last_metrics == last and run.last_metrics["iteration"] == 25
    assert run.last_val["iteration"] == 20 and set(run.last_val) == {"iteration", "val_pre_loss", "val_post_loss"}
    assert [r["iteration"] for r in run.val_log.tail_rows()] == [10, 20]
    assert len(run.log) == 25 and len(run.log.tail_rows()) == 25
    meta = t.metadata("maml")
    assert meta["metrics"]["val_post_loss"] == run.last_val["val_post_loss"]


def train_with_folder(path, iterations=30):
    cfg = ExperimentConfig(iterations=iterations, meta_batch_size=2, val_every=10, val_tasks=4, seed=2,
                           algorithms=[AlgorithmConfig.defaults(n) for n in ("maml", "pretrained")])
    folder = RunFolder.create(path, cfg)
    trainer = Trainer(cfg, record_every=0)
    logger = RunLogger(folder, checkpoint_every=0, tensorboard=False)
    logger.start(trainer)
    trainer.observers.append(logger)
    chunks = []
    trainer.run(callback=lambda p: chunks.append(p))
    return folder, trainer, chunks


def test_export_metrics_writes_the_run_folder_format(tmp_path):
    folder, trainer, progress = train_with_folder(tmp_path / "run")
    expected = folder.metrics_path.read_text()
    assert expected.splitlines()[0] == ",".join(CSV_HEADER)

    # the app's history, fed as the worker feeds it (every iteration's metrics, validation apart)
    history = MetricsHistory()
    for p in progress:
        chunk = {"train": {}, "val": {}}
        for part, source in (("train", p["metrics"]), ("val", p["val"])):
            for name, m in source.items():
                chunk[part][name] = {k: [v] for k, v in m.items()}
        history.add_chunk(chunk)
    assert history.to_csv() == expected  # the rows it holds (a short run: all of them)
    assert history.to_csv(folder.metrics_path) == expected  # the run folder's own rows
    # the Trainer's own logs give the same rows, also as the chunk a resumed app run starts from
    resumed_view = MetricsHistory()
    resumed_view.add_chunk(chunk_from_logs({n: (r.log, r.val_log) for n, r in trainer.runs.items()}))
    assert resumed_view.to_csv() == expected
    # and so does the run folder read back in bounded memory (opening a past run)
    opened = MetricsHistory()
    opened.add_chunk(chunk_from_logs(folder.read_metrics_logs(block=7)))
    assert opened.to_csv() == expected


def test_a_long_app_session_holds_a_fixed_amount_and_exports_the_folder_rows(tmp_path):
    history = MetricsHistory(capacity=256, tail=64)
    per_chunk = 5000
    for start in range(0, 200_000, per_chunk):
        its = np.arange(start + 1, start + per_chunk + 1)
        history.add_chunk({"train": {"maml": {"iteration": its, "pre_loss": its * 0 + 1.0, "post_loss": its * 1.0}},
                           "val": {"maml": {"iteration": its[-1:], "val_pre_loss": [2.0], "val_post_loss": [1.0]}}})
        if start == 100_000:
            size = history.nbytes()
    assert history.nbytes() == size and history.count("maml", "post_loss") == 200_000
    assert history.last_iteration() == 200_000
    x, y = history.series("maml", "post_loss")
    assert len(x) <= 256 and y[0] == pytest.approx(np.arange(1, 1025).mean())  # width 1024 bins
    rows = history.to_csv().splitlines()  # no folder: the bins, then the raw tail
    assert rows[0] == ",".join(CSV_HEADER) and len(rows) < 256 + 64 + 41 + 2
    assert rows[-1] == "200000,maml,1,200000,,,2,1,,"
    folder, _, _ = train_with_folder(tmp_path / "run", iterations=3)
    assert history.to_csv(folder.metrics_path) == folder.metrics_path.read_text()
