"""Every test session writes run folders into a temporary folder, never into ./runs of the checkout."""

import os
import tempfile

_RUNS = tempfile.mkdtemp(prefix="maml-lab-test-runs-")
os.environ["MAML_LAB_RUNS"] = _RUNS
