"""Soak test: does a long CLI training run stay in bounded memory?

Runs `python -m maml_lab train --task sinusoid --algorithm maml pretrained --iterations N --quiet --threads 1
--run-dir <tmp> --checkpoint-every 10000` as a subprocess and samples its resident set size (psutil when
installed, else /proc/<pid>/status VmRSS) when each checkpoint appears and until it exits. Prints the RSS after
10,000 iterations, at the end (when the final checkpoint appears; the last sample before the process exits is
printed too) and the difference; the target is an end RSS within 50 MB of the 10,000-iteration RSS.

    python benchmarks/soak_memory.py                      # 300,000 iterations
    python benchmarks/soak_memory.py --iterations 60000   # a few minutes
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 2**20
EVERY = 10_000
TARGET_MB = 50.0


def rss_bytes(pid: int) -> int | None:
    """The process's resident set size, or None once it is gone."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300_000, help="at least 10000 (default 300000)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between RSS samples")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (printed) instead of deleting it")
    args = ap.parse_args(argv)
    if args.iterations < EVERY:
        ap.error(f"--iterations must be at least {EVERY}")

    tmp = Path(tempfile.mkdtemp(prefix="maml-lab-soak-"))
    run_dir = tmp / "run"
    cmd = [sys.executable, "-m", "maml_lab", "train", "--task", "sinusoid", "--algorithm", "maml", "pretrained",
           "--iterations", str(args.iterations), "--quiet", "--threads", "1", "--run-dir", str(run_dir),
           "--checkpoint-every", str(EVERY)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(" ".join(cmd[1:]), flush=True)
    print(f"{'iteration':>10}  {'RSS MB':>8}  {'s':>7}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    name = re.compile(r"^iteration-(\d+)\.safetensors$")
    at: dict[int, int] = {}  # checkpoint iteration -> RSS when it appeared
    last = peak = 0
    while True:
        rss = rss_bytes(proc.pid)
        if proc.poll() is not None:
            break
        if rss is not None:
            last, peak = rss, max(peak, rss)
            ckpt_dir = run_dir / "checkpoints"
            found = [int(m.group(1)) for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else ())
                     if (m := name.match(p.name))]
            for it in sorted(found):
                if it not in at and (it % EVERY == 0 or it == args.iterations):
                    at[it] = rss
                    print(f"{it:>10,}  {rss / MB:8.1f}  {time.monotonic() - t0:7.0f}", flush=True)
        time.sleep(args.interval)
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"training failed ({proc.returncode}):\n{err}", file=sys.stderr)
        return 1
    if EVERY not in at:
        print("the 10,000-iteration checkpoint was never seen (sampling too slow?)", file=sys.stderr)
        return 1
    # the end: when the final checkpoint appeared (all iterations done); else the last sample before the exit
    first, end = at[EVERY] / MB, at.get(args.iterations, last) / MB
    size = max(p.stat().st_size for p in (run_dir / "checkpoints").iterdir())
    print(f"RSS after {EVERY:,} iterations: {first:.1f} MB")
    print(f"RSS at the end ({args.iterations:,} iterations): {end:.1f} MB (last sample {last / MB:.1f} MB, "
          f"peak {peak / MB:.1f} MB)")
    print(f"difference: {end - first:+.1f} MB (target: within {TARGET_MB:.0f} MB)"
          f"{'' if abs(end - first) <= TARGET_MB else '  -- OVER TARGET'}")
    print(f"checkpoint size: {size / 1024:.0f} KiB; metrics.csv {(run_dir / 'metrics.csv').stat().st_size / MB:.1f} MB;"
          f" {time.monotonic() - t0:.0f} s")
    if args.keep:
        print(f"run folder kept: {run_dir}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if abs(end - first) <= TARGET_MB else 2


if __name__ == "__main__":
    sys.exit(main())
