"""Data-parallel meta-training over torch.distributed (gloo on CPU): 2 processes give the parameters of 1
process with the same global meta-batch, and a rank that dies or hangs ends the job with RankLostError."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.algorithms.registry import algorithm_class, algorithm_names
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.distributed import RankLostError, World, init_from_env
from maml_lab.core.training.trainer import Trainer

needs_dist = pytest.mark.skipif(not dist.is_available(),
                                reason="this PyTorch build has no torch.distributed (gloo)")

STEPS = 5
JOIN_S = 60  # the parent never waits longer than this for a worker
CONV_BIASES = {f"{i}.bias" for i in range(0, 12, 3)}


# -- pure helpers (no process group) -----------------------------------------------------------------------
def test_shard_is_contiguous_uneven_and_covers_the_batch():
    batch = SinusoidFamily().sample(5, 3, 2, torch.Generator().manual_seed(0))
    parts = [World(rank=r, size=2).shard(batch) for r in range(2)]
    assert [p.num_tasks for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p.x_support for p in parts]), batch.x_support)
    assert torch.equal(torch.cat([p.y_query for p in parts]), batch.y_query)
    assert torch.equal(torch.cat([p.info["amplitude"] for p in parts]), batch.info["amplitude"])
    assert [World(rank=r, size=3).bounds(7) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert sum(World(rank=r, size=3).local_weight(7) for r in range(3)) == pytest.approx(1.0)
    assert World(rank=0, size=2).is_main and not World(rank=1, size=2).is_main


def test_every_rank_needs_a_task():
    with pytest.raises(ValueError, match="meta-batch size 2 .* world size 3"):
        World(rank=0, size=3).bounds(2)
    with pytest.raises(ValueError, match="meta-batch size 2 .* world size 3"):
        Trainer(ExperimentConfig(meta_batch_size=2, iterations=2, val_every=0), world=World(rank=2, size=3))


def test_sequential_reptile_settings_are_refused_across_processes():
    for options in ({"adam_state": "carry", "inner_batch": 0, "meta_batch": 0}, {**EXACT_REPTILE, "inner_batch": 10},
                    {**EXACT_REPTILE, "meta_batch": 1}):
        reptile = AlgorithmConfig.defaults("reptile", inner_optimizer="adam", options=options)
        with pytest.raises(ValueError, match="cannot be split across processes"):
            Trainer(ExperimentConfig(meta_batch_size=4, iterations=2, val_every=0, algorithms=[reptile]),
                    world=World(rank=0, size=2))
    # one process runs them as they are
    Trainer(ExperimentConfig(meta_batch_size=4, iterations=2, val_every=0,
                             algorithms=[AlgorithmConfig.defaults("reptile", inner_optimizer="adam")]))


def test_no_torchrun_environment_means_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env() is None


def test_single_rank_world_is_the_identity():
    world = World(rank=0, size=1)
    t = [torch.tensor([1.0, 2.0]), torch.tensor(3.0)]
    world.allreduce_weighted_(t, 1.0)
    assert t[0].tolist() == [1.0, 2.0] and t[1].item() == 3.0
    assert world.reduce_metrics({"post_loss": 0.5, "epsilon": 0.25}, 1.0) == {"post_loss": 0.5, "epsilon": 0.25}


# -- two gloo processes ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_image_family():
    from maml_lab.core.tasks.images import ImageTaskFamily
    from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing

    rng = np.random.default_rng(0)  # 12 classes of 4 random 12x12 "images"
    pixels = (rng.random((48, 1, 12, 12)) < 0.2).astype(np.uint8) * 255
    images = ImageSet("random", [f"c{i}" for i in range(12)], None, pixels, np.arange(0, 49, 4), Preprocessing())
    return ImageTaskFamily(images, ways=3)


# data-parallel Reptile equals one process when every task's inner loop is independent of the others: no Adam state
# carried from task to task, full-batch steps (no per-process mini-batch draws), every task of the meta-batch
EXACT_REPTILE = {"adam_state": "reset", "inner_batch": 0, "meta_batch": 0}


def _cases():
    """(name, config, family or None): float64, the same seed for every process."""
    sin = dict(iterations=STEPS, val_every=0, dtype="float64", device="cpu", hidden=[16, 16], shots=5, queries=5)
    return [
        ("all4", ExperimentConfig(meta_batch_size=4, seed=3, **sin,
                                  algorithms=[AlgorithmConfig.defaults(
                                      n, inner_steps=2 if n != "pretrained" else None,
                                      options=EXACT_REPTILE if n == "reptile" else None) for n in algorithm_names()
                                      if not algorithm_class(n).classification_only]),  # sinusoids: no classifiers
         None),
        ("uneven", ExperimentConfig(meta_batch_size=5, seed=4, **sin,
                                    algorithms=[AlgorithmConfig.defaults("maml", inner_steps=2),
                                                AlgorithmConfig.defaults("reptile", inner_steps=3,
                                                                         options=EXACT_REPTILE)]), None),
        ("images", ExperimentConfig(task="images", image_size=12, ways=3, meta_batch_size=3, shots=1, queries=1,
                                    iterations=STEPS, val_every=0, dtype="float64", device="cpu", seed=5,
                                    algorithms=[AlgorithmConfig.defaults("maml", task="images"),
                                                AlgorithmConfig.defaults("reptile", task="images",
                                                                         options={**EXACT_REPTILE, "train_shots": 2},
                                                                         inner_steps=2),
                                                *[AlgorithmConfig.defaults(n, task="images", inner_steps=2)
                                                  for n in ("baseline", "baselinepp")]]),
         _tiny_image_family()),
    ]


def _train(config, family, world, steps):
    trainer = Trainer(config, family=family, record_every=0, world=world)
    for _ in range(steps):
        trainer.step()
    return {"params": trainer.snapshot(),
            "history": {name: run.log.tail_rows() for name, run in trainer.runs.items()},
            "learned": {name: {k: v.detach().clone() for k, v in run.algorithm.export_tensors().items()}
                        for name, run in trainer.runs.items()}}


def _worker(rank: int, size: int, port: int, scenario: str, out: str, timeout_s: float) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    result: dict = {}
    world = None
    try:
        world = init_from_env("cpu", timeout_s=timeout_s)
        result["backend"] = world.backend
        if scenario == "equal":
            for name, config, family in _cases():
                result[name] = _train(config, family, world, STEPS)
                if rank == 0:  # the single-process reference: the whole meta-batch here
                    result[name + "/single"] = _train(config, family, None, STEPS)
        else:  # "die" or "hang": rank 1 leaves after 2 steps, rank 0 must notice
            config = ExperimentConfig(meta_batch_size=4, iterations=20, val_every=0, hidden=[8], seed=1)
            trainer = Trainer(config, record_every=0, world=world)
            for i in range(20):
                if rank == 1 and i == 2:
                    if scenario == "die":
                        os._exit(3)
                    time.sleep(JOIN_S)  # alive but stuck; the parent ends it
                t0 = time.perf_counter()
                try:
                    trainer.step()
                except RankLostError as exc:
                    result.update(error=str(exc), steps=trainer.iteration, waited_s=time.perf_counter() - t0)
                    break
    except BaseException:
        result["traceback"] = traceback.format_exc()
    finally:
        torch.save(result, Path(out) / f"rank{rank}.pt")
        if world is not None:
            world.close()


def _launch(tmp_path, scenario: str, timeout_s: float, wait_for=(0, 1)) -> list[dict]:
    """Start 2 spawned ranks, wait (bounded) for those in `wait_for`, end the rest; each rank's result dict."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, scenario, str(tmp_path), timeout_s), daemon=True)
             for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_S
    try:
        for r in wait_for:
            procs[r].join(max(deadline - time.monotonic(), 0.1))
            assert not procs[r].is_alive(), f"rank {r} did not finish within {JOIN_S} s (hang)"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    results = []
    for r in range(2):
        path = tmp_path / f"rank{r}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {})
        assert "traceback" not in results[r], f"rank {r} failed:\n{results[r]['traceback']}"
    return results


@needs_dist
def test_two_gloo_processes_match_one_process(tmp_path):
    ranks = _launch(tmp_path, "equal", timeout_s=30)
    assert all(r["backend"] == "gloo" for r in ranks)
    for name, config, family in _cases():
        single = ranks[0][name + "/single"]
        init = Trainer(config, family=family, record_every=0).snapshot()
        for algo in single["params"]:
            head_fit = algorithm_class(algo).adaptation_kind == "head_fit"
            # Baseline's all-class head is trained beside theta (its gradient a global mean too); theta's N-way head
            # is never trained
            for k, ref in single["learned"][algo].items():
                a, b = ranks[0][name]["learned"][algo][k], ranks[1][name]["learned"][algo][k]
                assert torch.equal(a, b) and torch.allclose(a, ref, rtol=0, atol=1e-9), f"{name}/{algo}/{k}"
            untrained = set(Trainer(config, family=family, record_every=0).model.head_names()) if head_fit else set()
            for k, ref in single["params"][algo].items():
                a, b = ranks[0][name]["params"][algo][k], ranks[1][name]["params"][algo][k]
                assert a.dtype == torch.float64
                assert torch.equal(a, b), f"{name}/{algo}/{k}: ranks differ"
                # conv-4's conv biases feed a batch norm: their true gradient is 0, what autograd returns (where
                # it is used) is rounding noise (~1e-15) that Adam rescales to ~lr * 1e-15 / eps, so they agree
                # to ~1e-8 only, and through them the other conv-4 parameters to ~1e-11
                tol = 1e-10 if name != "images" else 1e-7 if k in CONV_BIASES else 1e-9
                assert torch.allclose(a, ref, rtol=0, atol=tol), (
                    f"{name}/{algo}/{k}: max diff {float((a - ref).abs().max()):.3g}")
                if (k not in CONV_BIASES or name != "images") and k not in untrained:  # (the explicit conv-4 path
                    # gives the biases exactly 0)
                    assert not torch.equal(ref, init[algo][k]), f"{name}/{algo}/{k} did not train"
            # the reported metrics are the global means, on every rank
            for got0, got1, want in zip(ranks[0][name]["history"][algo], ranks[1][name]["history"][algo],
                                        single["history"][algo]):
                assert got0 == got1
                assert set(got0) == set(want)
                for key, value in want.items():
                    if head_fit and key.startswith("post_"):  # scored by a head fit whose fresh heads are drawn
                        continue  # for the tasks a process has: another draw on a shard than on the whole batch
                    assert got0[key] == pytest.approx(value, rel=1e-9, abs=1e-12), f"{name}/{algo}/{key}"


@needs_dist
@pytest.mark.parametrize("scenario", ["die", "hang"])
def test_a_lost_rank_ends_the_job_with_a_clear_error(tmp_path, scenario):
    timeout_s = 3.0
    t0 = time.monotonic()
    rank0, _ = _launch(tmp_path, scenario, timeout_s=timeout_s, wait_for=(0,))
    assert "error" in rank0, f"rank 0 did not notice the lost rank: {rank0}"
    assert rank0["steps"] == 2
    assert "stopped responding" in rank0["error"] and "the job was ended" in rank0["error"]
    assert "\n" not in rank0["error"]
    assert rank0["waited_s"] < timeout_s + 5
    assert time.monotonic() - t0 < JOIN_S
