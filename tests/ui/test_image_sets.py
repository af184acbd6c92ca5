"""Choosing the image set in the app: File ▸ Open image set (load report with skipped files and dropped classes,
clear messages for bad paths and unusable sets, nothing changed then) and File ▸ Download Omniglot against a
local HTTP server (progress, checksum, no file left on failure, cancel)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "omniglot"
SMALL1 = SHARED / "images_background_small1.zip"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))  # never the user's cache


def _write_set(root: Path, classes: int = 12, per_class: int = 6) -> Path:
    """A folder of class folders: `classes` glyph-like PNGs classes, dark strokes on white like Omniglot."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "Alphabet" / f"character{c:02d}"
        folder.mkdir(parents=True)
        base = np.full((28, 28), 255, np.uint8)
        base[4 + c:8 + c, 3:25] = 0  # each class a bar at its own height
        for i in range(per_class):
            img = base.copy()
            img[rng.integers(0, 28), rng.integers(0, 28)] = 0
            Image.fromarray(img).save(folder / f"{i:02d}.png")
    return root


def _config_dict(window):
    return window.panel.config().to_dict()


def _wait(qtbot, dialog) -> None:
    qtbot.waitUntil(lambda: not dialog.runner.busy, timeout=20000)


def test_open_folder_with_a_corrupt_file_shows_the_report(window, qtbot, tmp_path):
    root = _write_set(tmp_path / "myset")
    (root / "Alphabet" / "character03" / "broken.png").write_bytes(b"this is not a png")
    empty = root / "Alphabet" / "character99"
    empty.mkdir()
    (empty / "only.png").write_bytes(b"\x89PNG truncated")
    os.mkfifo(root / "Alphabet" / "character05" / "pipe.png")  # an untrusted set: never waited on, named
    window.panel.open_images.click()  # the panel's button opens the dialog too
    dialog = window.image_set_dialog
    assert dialog.isVisible()
    assert dialog.load(str(root))
    _wait(qtbot, dialog)
    text = dialog.report_text
    assert "12 classes, 72 images" in text
    assert "Skipped files (3)" in text and "character03/broken.png" in text and "cannot decode" in text
    assert "character05/pipe.png" in text and "a FIFO (named pipe), not a regular file" in text
    assert "within these limits: 25 M pixels an image" in text and "--max-set-bytes" in text
    assert "Dropped classes (1)" in text and "character99" in text
    assert "held out" in text and not dialog.error
    assert dialog.use_button.isEnabled()
    dialog.use_button.click()
    assert window.panel.task.currentData() == "images"
    assert window.panel.image_data == str(root.resolve())
    config = window.panel.config()
    assert config.data == str(root.resolve()) and config.ways == 5 and config.shots == 1
    assert window.tabs.currentWidget() is window.views["tasks"]
    assert window.views["tasks"].wait_until_idle(30)
    family = window.views["tasks"].family
    assert family is not None and family.image_set.num_classes == 5  # 30% held out
    assert window.views["tasks"].task is not None


@pytest.mark.parametrize("case", ["missing", "not-a-zip", "too-few-classes", "no-images"])
def test_bad_image_sets_say_why_and_change_nothing(window, qtbot, tmp_path, case):
    window.panel.task.setCurrentIndex(window.panel.task.findData("images"))
    before = _config_dict(window)
    if case == "missing":
        path, expected = tmp_path / "nowhere", "does not exist"
    elif case == "not-a-zip":
        path, expected = tmp_path / "notes.zip", "is not a zip file"
        path.write_text("hello")
    elif case == "too-few-classes":
        path, expected = _write_set(tmp_path / "small", classes=4), "cannot make 5-way 1-shot tasks"
    else:
        path, expected = tmp_path / "empty", "no usable classes"
        (path / "a").mkdir(parents=True)
        (path / "a" / "x.txt").write_text("no images here")
    dialog = window.open_image_set(str(path))
    _wait(qtbot, dialog)
    assert expected in dialog.error and expected in dialog.message.text()
    assert not dialog.use_button.isEnabled() and dialog.image_set is None
    dialog.accept()  # even forced, nothing is used
    assert _config_dict(window) == before and window.panel.image_data is None


def test_cancel_loading_changes_nothing(window, qtbot, tmp_path):
    root = _write_set(tmp_path / "cancel", classes=12)
    before = _config_dict(window)
    dialog = window.open_image_set()
    dialog.load(str(root))
    dialog.cancel_button.click()
    _wait(qtbot, dialog)
    if dialog.image_set is None:  # the load may have finished before the cancel reached it
        assert "cancelled" in dialog.message.text()
    dialog.reject()
    assert _config_dict(window) == before


# ----------------------------------------------------------------------------------------------------------------
# Download Omniglot


@pytest.fixture
def server(omniglot_server):
    return omniglot_server


def _download(window, folder, server, kind="python", sha256=None):
    return window.download_omniglot(str(folder), base_url=f"{server}/{kind}/", files=("images_background.zip",),
                                    checksums={"images_background.zip": sha256} if sha256 else None)


def test_download_completes_and_opens(window, qtbot, tmp_path, server):
    sha = hashlib.sha256(SMALL1.read_bytes()).hexdigest()
    folder = tmp_path / "omniglot"
    dialog = _download(window, folder, server, sha256=sha)
    assert dialog.start()
    qtbot.waitUntil(lambda: dialog.state != "running", timeout=20000)
    assert dialog.state == "done", dialog.error
    target = folder / "images_background.zip"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in folder.iterdir()) == ["images_background.zip"]  # no partial files
    assert dialog.bars["images_background.zip"].value() == 1000 and dialog.open_button.isVisible()
    dialog.open_button.click()  # straight into File ▸ Open image set with the downloaded zip
    opened = window.image_set_dialog
    _wait(qtbot, opened)
    assert "136 classes" in opened.report_text and opened.use_button.isEnabled()
    opened.reject()


def test_download_with_a_wrong_checksum_reports_and_leaves_no_file(window, qtbot, tmp_path, server):
    folder = tmp_path / "omniglot"
    dialog = _download(window, folder, server, sha256="0" * 64)
    dialog.start()
    qtbot.waitUntil(lambda: dialog.state != "running", timeout=20000)
    assert dialog.state == "failed" and "checksum mismatch" in dialog.error
    assert "checksum mismatch" in dialog.status.text()
    assert not list(folder.iterdir())  # neither the zip nor a partial file
    assert not dialog.open_button.isVisible() and dialog.download_button.isEnabled()


def test_download_can_be_cancelled(window, qtbot, tmp_path, server):
    folder = tmp_path / "omniglot"
    dialog = _download(window, folder, server, kind="slow")
    dialog.start()
    qtbot.waitUntil(lambda: dialog.bars["images_background.zip"].value() > 0, timeout=10000)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.state != "running", timeout=10000)
    assert dialog.state == "cancelled" and "cancelled" in dialog.status.text()
    assert not list(folder.iterdir())
