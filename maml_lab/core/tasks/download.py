"""Download Omniglot: the official background and evaluation zips, checked, written atomically, cancellable.

Files come from the official Omniglot repository's python/ folder (github.com/brendenlake/omniglot). Each is
streamed with urllib into a temp file beside its destination and renamed into place only when complete and,
when a checksum is known, when its sha256 matches; an interrupted, cancelled or wrong download leaves no
partial file and keeps any previous file. No resuming: a failed download starts over next time.

Checksums: the sha256 of the two official zips could not be verified when this was written (no network), so
OMNIGLOT_SHA256 holds None for them; pass `checksums={"images_background.zip": "<sha256>", ...}` to verify
them. They are still checked against their announced size and against the md5 sums that torchvision's
Omniglot dataset publishes for them (OMNIGLOT_MD5, likewise not re-verified here). The zips are read in place
by `load_image_set`: nothing is unpacked.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..permissions import follow_umask

OMNIGLOT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_FILES = ("images_background.zip", "images_evaluation.zip")
# sha256 of the official files; None: not verified here (see the module docstring)
OMNIGLOT_SHA256: dict[str, str | None] = {"images_background.zip": None, "images_evaluation.zip": None}
# md5 as published by torchvision.datasets.Omniglot
OMNIGLOT_MD5: dict[str, str] = {"images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
                                "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811"}
CHUNK = 1 << 16

ProgressFn = Callable[[str, int, int | None], object]  # (file name, bytes so far, total bytes or None)


class DownloadError(OSError):
    """A download that failed; the message says why, and no partial file was left behind."""


class DownloadCancelled(DownloadError):
    """The caller cancelled (the cancel event was set, or the progress callback returned False)."""


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _md5_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set()) if hasattr(cancel, "is_set") else bool(cancel())


def _hex(value: str | None, digits: int, kind: str) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != digits or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a {kind} checksum ({digits} hex digits): {value!r}")
    return value


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, timeout: float = 30.0, overwrite: bool = False,
                  md5: str | None = None) -> Path:
    """Fetch `url` to `dest` (a file path); returns dest.

    Skips the download when dest exists and matches `sha256` (or, without one, unless `overwrite`).
    Raises DownloadError (an OSError) on HTTP and network errors, a transfer shorter than announced, or a
    checksum mismatch; DownloadCancelled when `cancel` is set. In every failure dest is left as it was.
    """
    dest = Path(dest)
    name = dest.name
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http and https URLs are supported")
    sha256, md5 = _hex(sha256, 64, "sha256"), _hex(md5, 32, "md5")
    if dest.is_file() and not overwrite:
        if (sha256 or md5) is None or (sha256_of(dest) == sha256 if sha256 else _md5_of(dest) == md5):
            size = dest.stat().st_size
            if progress is not None:
                progress(name, size, size)
            return dest
    folder = dest.parent
    if not folder.is_dir():
        raise DownloadError(f"destination folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        h, h_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        done = 0
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked above
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"cannot download {name}: HTTP {exc.code} {exc.reason} from {url}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"cannot download {name} from {url}: {reason}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if progress is not None and progress(name, 0, total) is False:
                    raise DownloadCancelled(f"download of {name} cancelled")
                while True:
                    if _cancelled(cancel):
                        raise DownloadCancelled(f"download of {name} cancelled")
                    try:
                        block = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        done += len(exc.partial)
                        raise DownloadError(f"download of {name} was interrupted after {done:,} of "
                                            f"{total if total is not None else '?':,} bytes; nothing was saved "
                                            f"(try again)") from None
                    except (OSError, http.client.HTTPException) as exc:
                        raise DownloadError(f"download of {name} was interrupted after {done:,} bytes ({exc}); "
                                            f"nothing was saved (try again)") from None
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    h_md5.update(block)
                    done += len(block)
                    if progress is not None and progress(name, done, total) is False:
                        raise DownloadCancelled(f"download of {name} cancelled")
            if total is not None and done != total:
                raise DownloadError(f"download of {name} was interrupted after {done:,} of {total:,} bytes; "
                                    f"nothing was saved (try again)")
            out.flush()
            os.fsync(out.fileno())
        kept = " (the previous file was kept)" if dest.exists() else ""
        for kind, expected, got in (("sha256", sha256, h.hexdigest()), ("md5", md5, h_md5.hexdigest())):
            if expected is not None and got != expected:
                raise DownloadError(f"checksum mismatch for {name}: expected {kind} {expected}, got {got}; "
                                    f"the download was discarded{kept}")
        follow_umask(tmp)
        os.replace(tmp, dest)
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)


def download_omniglot(dest_dir: str | os.PathLike, files: Sequence[str] = OMNIGLOT_FILES,
                      base_url: str = OMNIGLOT_BASE_URL, checksums: Mapping[str, str | None] | None = None,
                      progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                      timeout: float = 30.0, overwrite: bool = False,
                      md5: Mapping[str, str | None] | None = None) -> list[Path]:
    """Download the Omniglot zips into `dest_dir` (created if missing); returns their paths.

    checksums: sha256 per file name (default OMNIGLOT_SHA256; None entries are not checked).
    md5: md5 per file name (default OMNIGLOT_MD5 when downloading from the official URL, else none).
    """
    dest_dir = Path(dest_dir).expanduser()
    if dest_dir.exists() and not dest_dir.is_dir():
        raise DownloadError(f"not a folder: {dest_dir}")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest_dir}: {exc.strerror or exc}") from None
    sums = dict(OMNIGLOT_SHA256)
    sums.update(checksums or {})
    md5s = dict(OMNIGLOT_MD5) if md5 is None and base_url == OMNIGLOT_BASE_URL else dict(md5 or {})
    base = base_url if base_url.endswith("/") else base_url + "/"
    out = []
    for name in files:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        out.append(download_file(urllib.parse.urljoin(base, urllib.parse.quote(name)), dest_dir / name,
                                 sums.get(name), progress, cancel, timeout, overwrite, md5s.get(name)))
    return out
