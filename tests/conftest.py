"""Every test session writes run folders into a temporary folder, never into ./runs of the checkout."""

import os
import tempfile

_RUNS = tempfile.mkdtemp(prefix="maml-lab-test-runs-")
os.environ["MAML_LAB_RUNS"] = _RUNS


# -- a local HTTP server standing in for the Omniglot download site (tests never use the internet) -------------
import http.server  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "omniglot"
# what the server calls each official file (the small official splits stand in for the big ones)
SERVED = {"images_background.zip": "images_background_small1.zip",
          "images_evaluation.zip": "images_background_small2.zip",
          "images_background_small1.zip": "images_background_small1.zip"}


class OmniglotHandler(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<file>: mode `python` serves the file, `truncated` stops half way, `slow` sends 64 KiB every
    50 ms (long enough to cancel). Anything else is a 404."""

    requests: list[str] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        OmniglotHandler.requests.append(self.path)
        kind, _, name = self.path.strip("/").partition("/")
        source = OMNIGLOT / SERVED.get(name, "-")
        if kind not in ("python", "truncated", "slow") or not source.is_file():
            self.send_error(404, "Not Found")
            return
        data = source.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if kind == "truncated":  # the server goes away half way
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif kind == "slow":
                for i in range(0, len(data), 1 << 16):
                    self.wfile.write(data[i:i + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client cancelled
            pass


@pytest.fixture(scope="session")
def omniglot_server():
    """Base URL of the local server; skips where the shared Omniglot test data is absent."""
    if not (OMNIGLOT / "images_background_small1.zip").is_file():
        pytest.skip(f"Omniglot test data not found at {OMNIGLOT}")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OmniglotHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def one_thread():
    """Small models: one torch thread is fastest and immune to a busy shared CPU. Use it in a module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """Rollouts and small models are many small ops: one torch thread (what training uses for them, --threads 1),
    restored afterwards. A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
