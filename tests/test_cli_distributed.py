"""`torchrun --nproc-per-node 2 -m maml_lab train`: the same parameters as one process, one run folder."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this PyTorch build has no torch.distributed")

ARGS = ["train", "--algorithm", "maml", "reptile", "--iterations", "8", "--meta-batch-size", "5", "--seed", "4",
        "--dtype", "float64", "--threads", "1", "--checkpoint-every", "4",
        # Reptile's sine-demo defaults draw mini-batches task after task: not data-parallel (refused), so full batches
        "--option", "reptile.inner_batch=0", "--option", "reptile.meta_batch=0"]


def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    single = subprocess.run([sys.executable, "-m", "maml_lab", *ARGS, "--run-dir", str(tmp_path / "one"),
                             "--out", str(tmp_path / "one.safetensors"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    runs = tmp_path / "runs"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "maml_lab", *ARGS, "--run-dir", str(runs / "two"),
                          "--out", str(tmp_path / "two.safetensors"), "--dist-timeout", "60"],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "distributed: 2 processes (gloo), 5 tasks per meta-batch, 3 on rank 0" in two.stderr
    assert two.stdout.count("exported maml") == 1  # rank 0 alone exports ...
    assert [p.name for p in runs.iterdir()] == ["two"]  # ... and writes the one run folder
    for name in ("maml", "reptile"):
        a = load_file(tmp_path / f"one-{name}.safetensors")
        b = load_file(tmp_path / f"two-{name}.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-10)
    assert (runs / "two" / "checkpoints" / "iteration-0000000008.safetensors").is_file()
    refused = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "maml_lab", "train", "--algorithm", "reptile", "--iterations", "2",
                              "--threads", "1", "--dist-timeout", "60", "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "cannot be split across processes" in refused.stderr
