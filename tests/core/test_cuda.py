"""Every path that branches on the device, run on CUDA (marked `cuda`; skipped where CUDA is not available).

    pytest -m cuda                     # these tests (benchmarks/gpu_check.sh runs them first)

What branches on the device: conv-4's explicit meta-gradient and its explicit first inner step are CPU-only, so on
CUDA MAML falls back to autograd (and per-task parameters run as one grouped convolution); the MLP's explicit
meta-gradient is device-agnostic; image tasks keep their uint8 pixels on the training device and gather sampled
rows there; the app's worker trains on the configured device and hands the GUI CPU copies; checkpoints are written
from CPU copies, so a run saved on CUDA resumes on the CPU. Each is compared with the same computation on the CPU,
in float64 where it is a gradient.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.images import ImageTaskFamily
from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing
from maml_lab.core.tasks.losses import cross_entropy_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

HAVE_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAVE_CUDA, reason="needs CUDA")]
DT = torch.float64


def random_images(classes=12, per_class=6, size=14, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((classes * per_class, 1, size, size)) < 0.25).astype(np.uint8) * 255
    return ImageSet("random", [f"c{i}" for i in range(classes)], None, pixels,
                    np.arange(0, classes * per_class + 1, per_class), Preprocessing(size=(size, size)))


def image_config(**kw):
    base = dict(task="images", image_size=14, meta_batch_size=3, shots=1, queries=2, iterations=6, val_every=3,
                val_tasks=4, seed=3, dtype="float64", algorithms=[AlgorithmConfig.defaults("maml", task="images")])
    base.update(kw)
    return ExperimentConfig(**base)


def image_family() -> ImageTaskFamily:
    family = ImageTaskFamily(random_images(), ways=5)
    family.validation_family = ImageTaskFamily(random_images(seed=1), ways=5)
    return family


def conv4_case(dtype=DT):
    model = Conv4(1, 14, 5, filters=8)
    theta = model.init_params(torch.Generator().manual_seed(0), dtype=dtype)
    batch = image_family().sample(4, 1, 2, torch.Generator().manual_seed(1), dtype=dtype)
    return model, theta, batch


def on(device, params):
    return OrderedDict((k, v.detach().to(device).requires_grad_(True)) for k, v in params.items())


# -- meta-gradients: explicit on the CPU, autograd on CUDA ----------------------------------------------------------

@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_conv4_maml_falls_back_to_autograd_on_cuda_and_agrees_with_the_cpu_explicit_path(name):
    model, theta, batch = conv4_case()
    cuda_batch = batch.to("cuda")
    # the explicit (autograd-free) paths decline CUDA inputs ...
    assert model.explicit_meta_gradient(on("cuda", theta), cuda_batch, cross_entropy_per_task, 1, 0.4,
                                        name == "fomaml") is None
    assert model.batched_loss_grad(on("cuda", theta), cuda_batch.x_support, cuda_batch.y_support,
                                   cross_entropy_per_task) is None
    assert model.per_task_strategy("cuda") == "grouped" and model.per_task_strategy("cpu") == "loop"
    # ... and take them on the CPU
    assert model.explicit_meta_gradient(on("cpu", theta), batch, cross_entropy_per_task, 1, 0.4,
                                        name == "fomaml") is not None
    grads = {}
    for device, b in (("cpu", batch), ("cuda", cuda_batch)):
        algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults(name, task="images"))
        params = on(device, theta)
        g, loss, _, logits = algo.meta_gradient(params, b, algo.first_order)
        assert all(x.device.type == device for x in g) and logits.device.type == device
        grads[device] = [x.detach().cpu() for x in g]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_mlp_explicit_meta_gradient_runs_on_cuda_as_on_the_cpu():
    model = MLP()
    theta = model.init_params(torch.Generator().manual_seed(0), dtype=DT)
    batch = SinusoidFamily().sample(6, 5, 5, torch.Generator().manual_seed(1), dtype=DT)
    algo = make_algorithm(model, "mse", AlgorithmConfig.defaults("maml", inner_steps=2))
    cpu, _, _, _ = algo.meta_gradient(on("cpu", theta), batch, False)
    cuda, _, _, _ = algo.meta_gradient(on("cuda", theta), batch.to("cuda"), False)
    for a, b in zip(cpu, cuda):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)


# -- image tasks on the device ---------------------------------------------------------------------------------------

def test_image_tasks_are_gathered_on_the_device_from_one_resident_copy_with_the_cpu_stream():
    family = image_family()
    g_cpu, g_cuda = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):  # the same tasks, batch after batch: the generator stays on the CPU
        a = family.sample(4, 1, 3, g_cpu)
        b = family.sample(4, 1, 3, g_cuda, device="cuda")
        for name in ("x_support", "y_support", "x_query", "y_query"):
            t = getattr(b, name)
            assert t.device.type == "cuda"
            assert torch.equal(t.cpu(), getattr(a, name))
        assert torch.equal(b.info["support_rows"].cpu(), a.info["support_rows"])
    assert torch.equal(g_cpu.get_state(), g_cuda.get_state())
    resident = family._pixels_on("cuda")
    assert resident.dtype == torch.uint8 and resident.is_cuda and family._pixels_on("cuda") is resident
    assert tuple(resident.shape) == tuple(family.image_set.pixels.shape)


def test_image_training_on_cuda_follows_the_cpu_run():
    cpu, cuda = Trainer(image_config(device="cpu"), family=image_family(), record_every=0), \
        Trainer(image_config(device="cuda"), family=image_family(), record_every=0)
    cpu.run()
    cuda.run()
    assert cuda.device.type == "cuda" and cuda.state == "finished"
    for k, v in cpu.runs["maml"].params.items():
        w = cuda.runs["maml"].params[k]
        assert w.is_cuda
        torch.testing.assert_close(w.detach().cpu(), v.detach(), rtol=1e-6, atol=1e-8)
    assert [r["iteration"] for r in cuda.runs["maml"].val_log.tail_rows()] == [3, 6]


# -- checkpoints -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("background", [False, True])
def test_a_checkpoint_saved_on_cuda_resumes_on_the_cpu(tmp_path, background):
    cuda = Trainer(image_config(device="cuda", iterations=8), family=image_family(), record_every=1)
    cuda.run(iterations=4)
    path = tmp_path / "cuda.safetensors"
    if background:
        writer = CheckpointWriter()
        writer.save(cuda, path)
        cuda.run(iterations=2)  # training on while the file is written
        writer.wait()
    else:
        save_checkpoint(cuda, path)
    cpu = Trainer(image_config(device="cpu", iterations=8), family=image_family(), record_every=1)
    header = load_checkpoint(cpu, path)
    assert header["iteration"] == 4 and cpu.iteration == 4
    assert all(v.device.type == "cpu" for v in cpu.runs["maml"].params.values())
    reference = Trainer(image_config(device="cpu", iterations=8), family=image_family(), record_every=1)
    reference.run(iterations=4)  # the run saved on CUDA, to rounding: the same parameters
    for k, v in reference.runs["maml"].params.items():
        torch.testing.assert_close(cpu.runs["maml"].params[k].detach(), v.detach(), rtol=1e-6, atol=1e-8)
    cpu.run()
    assert cpu.state == "finished" and cpu.iteration == 8


# -- the app's worker ------------------------------------------------------------------------------------------------

def test_the_worker_trains_on_cuda_and_hands_the_gui_cpu_copies(qapp):
    from maml_lab.ui.worker import VAL_BUDGET, TrainingWorker

    worker = TrainingWorker(progress_hz=1000.0, snapshot_interval=0.0)
    started, snapshots, ended, failed = [], [], [], []
    worker.started.connect(started.append)
    worker.snapshot.connect(snapshots.append)
    worker.finished.connect(ended.append)
    worker.failed.connect(failed.append)
    config = ExperimentConfig(iterations=20, meta_batch_size=4, val_every=5, val_tasks=4, hidden=[16], device="cuda")
    worker.run(config)  # the slot, called directly: runs in this thread
    assert not failed and ended[-1].state == "finished"
    assert started[0].device.startswith("cuda")
    assert snapshots and all(t.device.type == "cpu" for s in snapshots for p in s.params.values() for t in p.values())
    assert 0 < VAL_BUDGET < 0.05
