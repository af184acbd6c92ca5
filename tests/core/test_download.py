"""Downloading Omniglot against a local HTTP server (no internet): checksums, interruption, cancellation,
atomic replacement, and the `download` command's one-line errors."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import pytest

from maml_lab.cli import main
from maml_lab.core.tasks.download import DownloadCancelled, DownloadError, download_file, download_omniglot
from tests.conftest import SERVED, OmniglotHandler

SHARED = Path(__file__).resolve().parents[3] / "shared" / "omniglot"
SMALL1 = SHARED / "images_background_small1.zip"
SMALL1_SHA256 = "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
pytestmark = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")

@pytest.fixture
def server(omniglot_server):
    return omniglot_server


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def test_download_checks_the_checksum_and_reports_progress(server, tmp_path):
    seen = []
    dest = tmp_path / "images_background_small1.zip"
    out = download_file(f"{server}/python/images_background_small1.zip", dest, sha256=SMALL1_SHA256,
                        progress=lambda name, done, total: seen.append((name, done, total)))
    assert out == dest and dest.read_bytes() == SMALL1.read_bytes()
    assert seen[0] == (dest.name, 0, SMALL1.stat().st_size) and seen[-1][1] == seen[-1][2]
    assert _leftovers(tmp_path) == []
    # present with the right checksum: no second request
    before = len(OmniglotHandler.requests)
    download_file(f"{server}/python/images_background_small1.zip", dest, sha256=SMALL1_SHA256.upper())
    assert len(OmniglotHandler.requests) == before


def test_wrong_checksum_keeps_the_previous_file(server, tmp_path):
    dest = tmp_path / "images_background.zip"
    dest.write_bytes(b"the previous file")
    with pytest.raises(DownloadError, match=r"checksum mismatch for images_background.zip: expected sha256 0+, "
                                            rf"got {SMALL1_SHA256}; the download was discarded \(the previous "
                                            r"file was kept\)"):
        download_file(f"{server}/python/images_background.zip", dest, sha256="0" * 64)
    assert dest.read_bytes() == b"the previous file"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="not a sha256 checksum"):
        download_file(f"{server}/python/images_background.zip", dest, sha256="abc")


def test_interrupted_transfer_leaves_no_partial_file(server, tmp_path):
    dest = tmp_path / "images_background.zip"
    with pytest.raises(DownloadError, match=r"download of images_background.zip was interrupted after [\d,]+ of "
                                            r"[\d,]+ bytes; nothing was saved"):
        download_file(f"{server}/truncated/images_background.zip", dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_cancel_from_another_thread_leaves_no_partial_file(server, tmp_path):
    dest = tmp_path / "images_background.zip"
    dest.write_bytes(b"old")
    stop = threading.Event()

    def progress(name, done, total):
        if done > 0:
            stop.set()  # as a UI's Cancel button would, between chunks

    with pytest.raises(DownloadCancelled, match="cancelled"):
        download_file(f"{server}/python/images_background.zip", dest, overwrite=True, progress=progress,
                      cancel=stop)
    assert dest.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_http_and_network_errors_are_clear(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server}/python/nothing.zip", tmp_path / "nothing.zip")
    with pytest.raises(DownloadError, match="only http and https"):
        download_file("ftp://example.org/x.zip", tmp_path / "x.zip")
    with pytest.raises(DownloadError, match="cannot download x.zip from"):
        download_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", timeout=5)  # discard port: refused
    with pytest.raises(DownloadError, match="destination folder does not exist"):
        download_file(f"{server}/python/images_background.zip", tmp_path / "no" / "x.zip")
    assert list(tmp_path.iterdir()) == []


def test_download_omniglot_both_zips(server, tmp_path):
    dest = tmp_path / "omniglot"  # created
    sha_eval = hashlib.sha256((SHARED / SERVED["images_evaluation.zip"]).read_bytes()).hexdigest()
    paths = download_omniglot(dest, base_url=f"{server}/python/",
                              checksums={"images_background.zip": SMALL1_SHA256, "images_evaluation.zip": sha_eval})
    assert [p.name for p in paths] == ["images_background.zip", "images_evaluation.zip"]
    assert all(zipfile.is_zipfile(p) for p in paths)
    with pytest.raises(ValueError, match="plain file name"):
        download_omniglot(dest, files=["../x.zip"], base_url=f"{server}/python/")


def test_download_command(server, tmp_path, capsys):
    dest = tmp_path / "data"
    assert main(["download", "--dest", str(dest), "--sets", "background", "--base-url", f"{server}/python",
                 "--sha256", f"images_background.zip={SMALL1_SHA256}", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(dest / "images_background.zip")
    assert (dest / "images_background.zip").read_bytes() == SMALL1.read_bytes()
    for args, message in [
        (["--sha256", f"images_background.zip={'1' * 64}", "--overwrite"], "checksum mismatch"),
        (["--sha256", "oops"], "--sha256 takes NAME=HEX"),
        (["--sha256", "images_evaluation.zip=" + "1" * 64], "not downloaded"),
    ]:
        code = main(["download", "--dest", str(dest), "--sets", "background", "--base-url", f"{server}/python",
                     "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["download", "--dest", str(blocker), "--base-url", f"{server}/python", "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert (dest / "images_background.zip").read_bytes() == SMALL1.read_bytes()
