"""Dialogs for image sets: File ▸ Open image set (a zip or a folder of class folders, loaded off the GUI thread
with progress and Cancel, its load report shown before it is used) and File ▸ Download Omniglot (the official
zips, with progress, checksums and an atomic move into the folder the user picks; cancellable).

Both run their work with ui.background.BackgroundRunner, so the window stays responsive; a bad path, an
unusable set or a failed download says why in the dialog and changes nothing.
"""

from __future__ import annotations

import html
import zipfile
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from .background import BackgroundRunner
from .theme import ERROR, MUTED

REPORT_LIMIT = 200  # skipped files listed in the report (the count is always complete)


def _message(text: str) -> str:
    """A worker's 'ExceptionName: text' without the exception name, for people."""
    for prefix in ("ValueError: ", "DownloadError: ", "OSError: ", "FileNotFoundError: ", "BadZipFile: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def check_usable(image_set, ways: int, shots: int, queries: int) -> str:
    """Why `image_set` cannot make the experiment's tasks (train and held-out classes), or '' when it can."""
    from ..core.tasks.images import families_from_image_set

    try:
        train, heldout = families_from_image_set(image_set, ways, rotations=False)
        for part, family in (("training", train), ("held-out", heldout)):
            try:
                family.validate(shots, queries)
            except ValueError as exc:
                raise ValueError(f"{part} classes: {exc}") from None
    except ValueError as exc:
        return str(exc)
    return ""


def report_html(image_set, problem: str = "", ways: int = 5) -> str:
    """The load report: counts, how the images were prepared, the split, skipped files (with the reason) and
    dropped classes."""
    from ..core.tasks.images import split_rule

    r = image_set.report
    e = html.escape
    parts = [f"<p><b>{e(image_set.name)}</b>: <b>{image_set.num_classes:,} classes, {image_set.num_images:,} "
             f"images</b>"]
    if r is not None:
        how = "from the cache" if r.from_cache else ("generated" if r.source == "glyphs" else "decoded")
        parts.append(f" · {e(r.layout or 'class folders')} · {how} in {r.seconds:.2f} s")
    parts.append("</p>")
    c, h, w = image_set.image_shape
    prep = image_set.preprocessing
    inverted = " · inverted (dark strokes on a light background become 1 on 0)" if prep.invert else ""
    lo, hi = int(image_set.counts.min()), int(image_set.counts.max())
    per_class = f"{lo}" if lo == hi else f"{lo}–{hi}"
    parts.append(f"<p>{w}×{h} {prep.mode} · {per_class} images per class{inverted}</p>")
    if not problem:
        try:
            n_train, rule = split_rule(image_set.num_classes, ways)
            parts.append(f"<p>{n_train:,} classes for meta-training, {image_set.num_classes - n_train:,} held out "
                         f"({e(rule)}).</p>")
        except ValueError:
            pass
    else:
        parts.append(f"<p style='color:{ERROR}'><b>Cannot be used for this experiment:</b> {e(problem)}</p>")
    if r is not None:
        if r.skipped:
            parts.append(f"<p><b>Skipped files ({len(r.skipped):,})</b>: not used</p><table cellspacing=2>")
            for path, reason in r.skipped[:REPORT_LIMIT]:
                parts.append(f"<tr><td>{e(path)}</td><td style='color:{MUTED}'>&nbsp;&nbsp;{e(reason)}</td></tr>")
            parts.append("</table>")
            if len(r.skipped) > REPORT_LIMIT:
                parts.append(f"<p style='color:{MUTED}'>… and {len(r.skipped) - REPORT_LIMIT:,} more</p>")
        else:
            parts.append(f"<p style='color:{MUTED}'>No files skipped.</p>")
        if r.dropped_classes:
            parts.append(f"<p><b>Dropped classes ({len(r.dropped_classes):,})</b>, no usable image: "
                         + ", ".join(e(d) for d in r.dropped_classes[:REPORT_LIMIT]) + "</p>")
        for note in r.notes:
            parts.append(f"<p style='color:{MUTED}'>{e(note)}</p>")
        if r.limits_text():
            parts.append(f"<p style='color:{MUTED}'>Read as untrusted data, within these limits: "
                         f"{e(r.limits_text())}. Files over them are skipped; for a set that truly is larger, "
                         "train from the command line with --max-image-pixels, --max-file-bytes, --max-zip-ratio "
                         "or --max-set-bytes.</p>")
    return "".join(parts)


class ImageSetDialog(QDialog):
    """Choose a zip or a folder, load it (progress, Cancel), read the report, then "Use image set"."""

    def __init__(self, parent=None, start_dir: str = "", image_size: int = 28, image_mode: str = "grayscale",
                 ways: int = 5, shots: int = 1, queries: int = 5):
        super().__init__(parent)
        self.setWindowTitle("Open image set")
        self.setMinimumSize(640, 460)
        self.start_dir = start_dir
        self.image_size, self.image_mode = int(image_size), image_mode
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.image_set = None
        self.path: str | None = None  # of the loaded, usable set
        self.error = ""
        self.report = ""

        self.runner = BackgroundRunner("image-set", self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_loaded)
        self.runner.failed.connect(lambda _t, msg: self._fail(_message(msg)))
        self.runner.cancelled.connect(lambda _t: self._fail("Loading was cancelled: nothing changed.", kind="info"))
        self.runner.busy_changed.connect(lambda _b: self._sync())

        intro = QLabel("A zip file or a folder of class folders: Omniglot's <i>alphabet/character/*.png</i>, or "
                       "<i>class/*.png</i> (png, jpg, bmp, gif). Images become "
                       f"{self.image_size}×{self.image_size} {image_mode}, strokes 1 on 0.")
        intro.setWordWrap(True)
        intro.setProperty("hint", True)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Path of a zip file or a folder")
        self.path_edit.returnPressed.connect(lambda: self.load(self.path_edit.text()))
        self.zip_button = QPushButton("Zip file…")
        self.zip_button.clicked.connect(self._browse_zip)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.clicked.connect(self._browse_folder)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(lambda: self.load(self.path_edit.text()))
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        for b in (self.zip_button, self.folder_button, self.load_button):
            row.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel loading")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.runner.cancel)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setVisible(False)
        self.report_view = QTextBrowser()
        self.report_view.setOpenLinks(False)
        self.report_view.setPlaceholderText("The load report appears here: classes, images, skipped files and why, "
                                            "dropped classes.")
        self.use_button = QPushButton("Use image set")
        self.use_button.setProperty("primary", True)
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self._use_for_training)
        self.use_as = "data"  # or "heldout": the set the experiment's validation and eval use (--eval-data)
        self.heldout_button = QPushButton("Use as held-out set")
        self.heldout_button.setToolTip("Validation and evaluation use this set's classes; every class of the "
                                       "experiment's image set meta-trains (Lake's background / evaluation split)")
        self.heldout_button.setEnabled(False)
        self.heldout_button.clicked.connect(self._use_as_heldout)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.heldout_button)
        buttons.addWidget(self.use_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 14, 14, 14)
        layout.setSpacing(8)
        layout.addWidget(intro)
        layout.addLayout(row)
        layout.addLayout(prow)
        layout.addWidget(self.message)
        layout.addWidget(self.report_view, 1)
        layout.addLayout(buttons)

    def _use_for_training(self) -> None:
        self.use_as = "data"
        self.accept()

    def _use_as_heldout(self) -> None:
        self.use_as = "heldout"
        self.accept()

    # -- choosing and loading ------------------------------------------------------------------------------
    def _browse_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image set (zip, or a mini-ImageNet .pkl or .hdf5)",
                                              self.start_dir,
                                              "Image sets (*.zip *.pkl *.hdf5 *.h5);;Zip archives (*.zip);;"
                                              "mini-ImageNet: learn2learn (*.pkl), torchmeta (*.hdf5 *.h5);;"
                                              "All files (*)")
        if path:
            self.load(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open image set (folder of class folders)", self.start_dir)
        if path:
            self.load(path)

    def load(self, path) -> bool:
        """Start loading `path` off the GUI thread; False (with a message) when it cannot be an image set."""
        from ..core.tasks.imagesets import Preprocessing, load_image_set

        text = str(path or "").strip()
        self.path_edit.setText(text)
        self.image_set, self.path, self.report = None, None, ""
        self.report_view.clear()
        if not text:
            return self._fail("Choose a zip file or a folder first.")
        p = Path(text).expanduser()
        if not p.exists():
            return self._fail(f"{p} does not exist: nothing changed.")
        if p.is_file() and not zipfile.is_zipfile(p):
            return self._fail(f"{p.name} is not a zip file. Choose a zip file, or a folder of class folders.")
        if not (p.is_file() or p.is_dir()):
            return self._fail(f"{p} is neither a folder nor a zip file.")
        prep = Preprocessing(size=(self.image_size, self.image_size), mode=self.image_mode)
        ways, shots, queries = self.ways, self.shots, self.queries

        def job(progress, cancel):
            image_set = load_image_set(p, prep, progress=progress, cancel=cancel)
            return p, image_set, check_usable(image_set, ways, shots, queries)

        self.message.setVisible(False)
        self.error = ""
        self.progress.setRange(0, 0)
        self.runner.submit(job, tag="load")
        self._sync()
        return True

    def _on_progress(self, _tag: str, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat("decoding %v of %m images")

    def _on_loaded(self, _tag: str, result) -> None:
        path, image_set, problem = result
        self.report = report_html(image_set, problem, self.ways)
        self.report_view.setHtml(self.report)
        if problem:
            self._fail(f"{path.name} cannot make {self.ways}-way {self.shots}-shot tasks: {problem}. "
                       "Nothing changed.")
            self.report_view.setHtml(self.report)
            return
        self.image_set, self.path = image_set, str(path.resolve())
        self._show(f"Loaded {image_set.num_classes:,} classes. Press <b>Use image set</b> to train on it.", "info")
        self._sync()

    def _fail(self, text: str, kind: str = "error") -> bool:
        self.error = text if kind == "error" else ""
        self.image_set, self.path = None, None
        self._show(html.escape(text), kind)
        self._sync()
        return False

    def _show(self, text: str, kind: str) -> None:
        color = ERROR if kind == "error" else MUTED
        self.message.setText(f"<span style='color:{color}'>{text}</span>")
        self.message.setVisible(True)

    def _sync(self) -> None:
        busy = self.runner.busy
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        for w in (self.path_edit, self.zip_button, self.folder_button, self.load_button):
            w.setEnabled(not busy)
        self.use_button.setEnabled(not busy and self.image_set is not None)
        self.heldout_button.setEnabled(not busy and self.image_set is not None)

    @property
    def report_text(self) -> str:
        return self.report_view.toPlainText()

    def done(self, result: int) -> None:
        self.runner.shutdown()
        super().done(result)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


class DownloadDialog(QDialog):
    """Download Omniglot's official zips into a folder: progress per file, Cancel, checksums, atomic moves."""

    open_requested = Signal(str)  # a downloaded zip to open as the image set

    def __init__(self, parent=None, folder: str = "", base_url: str | None = None, files=None, checksums=None,
                 md5=None):
        from ..core.tasks.download import OMNIGLOT_BASE_URL, OMNIGLOT_FILES

        super().__init__(parent)
        self.setWindowTitle("Download Omniglot")
        self.setMinimumWidth(600)
        self.base_url = base_url or OMNIGLOT_BASE_URL
        self.files = tuple(files or OMNIGLOT_FILES)
        self.checksums, self.md5 = checksums, md5
        self.paths: list[Path] = []
        self.error = ""
        self.state = "idle"  # idle, running, done, failed, cancelled
        self._live = {"file": "", "done": 0, "total": None}

        self.runner = BackgroundRunner("download", self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_done)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.busy_changed.connect(lambda _b: self._sync())

        intro = QLabel("Omniglot (Lake, Salakhutdinov &amp; Tenenbaum, 2015): 1,623 handwritten characters of 50 "
                       "alphabets, 20 drawings each, MIT licence. The official <i>images_background.zip</i> (964 "
                       "characters) and <i>images_evaluation.zip</i> (659) come from github.com/brendenlake/omniglot; "
                       "each is checked and moved into the folder only when complete.")
        intro.setWordWrap(True)
        intro.setProperty("hint", True)
        self.folder_edit = QLineEdit(folder)
        self.folder_edit.setPlaceholderText("Folder to save the zips in")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.browse_button = browse
        row = QHBoxLayout()
        row.addWidget(QLabel("Folder"))
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        self.bars: dict[str, QProgressBar] = {}
        for i, name in enumerate(self.files):
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(0)
            bar.setFormat("waiting")
            grid.addWidget(QLabel(name), i, 0)
            grid.addWidget(bar, i, 1)
            self.bars[name] = bar
        grid.setColumnStretch(1, 1)
        self.status = QLabel(" ")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.download_button = QPushButton("Download")
        self.download_button.setProperty("primary", True)
        self.download_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button = QPushButton("Open image set")
        self.open_button.setToolTip("Use the downloaded background set (964 characters) for image tasks")
        self.open_button.clicked.connect(self._open)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.cancel_button, self.close_button, self.open_button, self.download_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 14, 14, 14)
        layout.setSpacing(10)
        layout.addWidget(intro)
        layout.addLayout(row)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self._sync()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Download Omniglot into", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def start(self, folder: str | None = None) -> bool:
        """Start downloading into `folder` (default: the folder field); False with a message when it cannot."""
        from ..core.tasks.download import download_omniglot

        if folder is not None:
            self.folder_edit.setText(str(folder))
        text = self.folder_edit.text().strip()
        if not text:
            return self._fail("Choose a folder to save the zips in.")
        dest = Path(text).expanduser()
        if dest.exists() and not dest.is_dir():
            return self._fail(f"{dest} is a file, not a folder.")
        files, base_url, checksums, md5 = self.files, self.base_url, self.checksums, self.md5
        live = self._live = {"file": "", "done": 0, "total": None}

        def job(progress, cancel):
            def on_bytes(name, done, total):
                live.update(file=name, done=done, total=total)
                i = files.index(name) if name in files else 0
                frac = min(done / total, 1.0) if total else 0.0
                progress(int((i + frac) * 1000), len(files) * 1000)

            return download_omniglot(dest, files, base_url, checksums, progress=on_bytes, cancel=cancel, md5=md5)

        self.paths, self.error, self.state = [], "", "running"
        for bar in self.bars.values():
            bar.setValue(0)
            bar.setFormat("waiting")
        self._show(f"Downloading into {dest}…", MUTED)
        self.runner.submit(job, tag="download")
        self._sync()
        return True

    def cancel(self) -> None:
        self.runner.cancel()

    def _on_progress(self, _tag: str, done: int, total: int) -> None:
        live = self._live
        index = done // 1000
        for i, name in enumerate(self.files):
            bar = self.bars[name]
            if i < index:
                bar.setValue(1000)
                bar.setFormat("done")
            elif i == index:
                bar.setValue(done % 1000)
                if live["file"] == name:
                    bar.setFormat(f"{_mb(live['done'])} of {_mb(live['total'])}")

    def _on_done(self, _tag: str, paths) -> None:
        self.paths = [Path(p) for p in paths]
        self.state = "done"
        for bar in self.bars.values():
            bar.setValue(1000)
            bar.setFormat("done")
        sizes = ", ".join(f"{p.name} ({_mb(p.stat().st_size)})" for p in self.paths if p.exists())
        folder = self.paths[0].parent if self.paths else ""
        self._show(f"Saved {html.escape(sizes)} in {html.escape(str(folder))}. Open the background set to train "
                   "on real handwriting.", "#1B7F5A")
        self._sync()

    def _on_failed(self, _tag: str, message: str) -> None:
        self._fail(_message(message))

    def _on_cancelled(self, _tag: str) -> None:
        self.state = "cancelled"
        self._show("Download cancelled: nothing partial was left in the folder.", MUTED)
        self._sync()

    def _fail(self, text: str) -> bool:
        self.state = "failed"
        self.error = text
        self._show(html.escape(text), ERROR)
        self._sync()
        return False

    def _show(self, text: str, color: str) -> None:
        self.status.setText(f"<span style='color:{color}'>{text}</span>")

    def _sync(self) -> None:
        busy = self.runner.busy
        self.download_button.setEnabled(not busy)
        self.download_button.setText("Download again" if self.state == "done" else "Download")
        self.cancel_button.setVisible(busy)
        self.folder_edit.setEnabled(not busy)
        self.browse_button.setEnabled(not busy)
        self.open_button.setVisible(self.state == "done" and bool(self.paths))

    def _open(self) -> None:
        if self.paths:
            self.open_requested.emit(str(self.paths[0]))
            self.accept()

    def done(self, result: int) -> None:
        self.runner.shutdown()  # cancels a download still running (it stops within one 64 KiB chunk)
        super().done(result)
