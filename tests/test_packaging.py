"""The wheel ships what the app needs: every package, and the top-level resources/ folder as maml_lab.resources."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_every_module_and_the_resources(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("maml_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"maml_lab/{p.relative_to(ROOT / 'maml_lab').as_posix()}" for p in (ROOT / "maml_lab").rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    resources = {f"maml_lab/resources/{p.name}" for p in (ROOT / "resources").iterdir()}
    assert resources and resources <= names, sorted(resources - names)
