"""lab/memory.py: after keep_freed_memory, MAML meta-steps on 2-D navigation (the same large buffers every step)
stop paying a page fault per 4 KB every step (glibc, Linux). Each mode runs in a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
from collections import OrderedDict
import torch
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import NavigationFamily
from maml_lab.lab.memory import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
env, policy = NavigationFamily(horizon=50), GaussianMLPPolicy()
theta = policy.init_params(torch.Generator().manual_seed(0))
algo = make_algorithm(policy, "policy_gradient", AlgorithmConfig.defaults("maml", task="navigation"))


def step():
    batch = env.sample(10, 10, 10, torch.Generator().manual_seed(1))
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo.meta_gradient(leaves, batch, first_order=False)


step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_repeated_meta_steps_reuse_freed_memory_without_page_faults():
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout.split()[-1])
    assert faults["default"] > 2000, faults  # glibc's defaults: fresh pages for the large buffers every step
    assert faults["keep"] < faults["default"] / 10, faults
