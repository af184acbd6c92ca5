"""The Python API page (docs/api.md) runs as written: its code blocks execute in a fresh folder and plot."""

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_example_runs_and_draws(tmp_path):
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S))
    assert "TrainingSession" in code
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("finished")
    assert (tmp_path / "api-demo.png").stat().st_size > 10_000
    assert (tmp_path / "maml-init.safetensors").is_file() and (tmp_path / "api-demo-run" / "metrics.csv").is_file()
