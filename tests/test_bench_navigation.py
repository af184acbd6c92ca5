"""benchmarks/bench_navigation.py runs end to end at a tiny size: the engine, its autograd route and the
per-environment loop agree on the meta-gradient, and it prints the CPU, the ratios and the lower bound, for the
meta-gradient and for the whole TRPO meta-iteration."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_navigation_prints_ratios_to_the_loop_and_the_lower_bound():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_navigation.py"), "--rounds", "1",
                          "--goals", "2", "--trajectories", "3"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("CPU: ") and "thread(s)" in text
    diffs = re.search(r"autograd ([0-9.e+-]+), loop ([0-9.e+-]+)$", text, re.M)
    assert diffs and float(diffs.group(1)) < 1e-4 and float(diffs.group(2)) < 1e-4  # the same meta-gradient
    assert re.search(r"per-environment loop [0-9.]+ s \([0-9.]+x\)", text)
    assert re.search(r"engine / bound = [0-9.]+", text) and "Hessian-vector product" in text
    # the default outer step, TRPO, the same three ways and against its bound (the steps may differ: ten
    # conjugate-gradient iterations and the line search amplify float32 rounding at this tiny size)
    assert re.search(r"^TRPO round 1: engine [0-9.]+ s, autograd [0-9.]+ s, loop [0-9.]+ s", text, re.M)
    assert re.search(r"with the TRPO step .* engine [0-9.]+ s; autograd route .* per-environment loop [0-9.]+ s", text)
    assert re.search(r"TRPO engine / bound = [0-9.]+", text) and "KL products" in text
    # the pretrained baseline's step, the engine against autograd and its bound, the same gradient
    diff = re.search(r"^pretrained round 1: engine [0-9.]+ s, autograd [0-9.]+ s; max relative difference of the "
                     r"gradient ([0-9.e+-]+)$", text, re.M)
    assert diff and float(diff.group(1)) < 1e-4
    assert re.search(r"pretrained engine / bound = [0-9.]+", text)
