"""Opening a hostile image set through the CLI: never a traceback, a hang or a memory blow-up (issue 22, class 1).

The hostile files are made on the fly and stay small on disk: a 3 MB zip whose entry inflates to 3 GiB, a 20 KB
PNG declaring 13000x13000 pixels, a sparse 200 MB file, links to /dev/zero and out of the set, a FIFO, a folder
whose name is not UTF-8. Each CLI run is a child process that reports its own peak RSS (VmHWM) on exit; it
runs under a 4 GiB address-space cap so that a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from maml_lab.cli import main
from maml_lab.core.tasks.imagelimits import GIB, LoadLimits, MemoryNeedError, check_memory, parse_bytes
from maml_lab.core.tasks.imagesets import Preprocessing, load_image_set
from maml_lab.lab.session import TrainingSession

ROOT = Path(__file__).resolve().parents[1]
PEAK_BUDGET_KB = 1024 * 1024  # 1 GB: the bound for any image-set bomb
# the CLI in a child that prints its own peak RSS whatever happens (main's exit code, or an exception)
# VmHWM (this process image's own high-water mark), not ru_maxrss: Linux carries the forking parent's RSS into a
# child's ru_maxrss across exec, so a pytest process grown to 1.9 GB by earlier tests made every child "peak" there
WRAPPER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
from maml_lab.cli import main
try:
    code = main(sys.argv[1:])
finally:
    sys.stderr.write(f"\\npeak-rss-kb {peak_kb()}\\n")
sys.exit(code)
"""
TRAIN = ["train", "--task", "images", "--iterations", "1", "--threads", "1", "--meta-batch-size", "2",
         "--ways", "2", "--shots", "1", "--queries", "1", "--val-every", "0"]


def _cli(args, cwd: Path, timeout: float = 180) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KB) of `maml-lab ARGS` in a child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MAML_LAB_CACHE=str(cwd / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    m = re.search(r"peak-rss-kb (\d+)", r.stderr)
    assert m, r.stderr
    return r.returncode, r.stderr[:m.start()], int(m.group(1))


def _png(size=(20, 20), value=128, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, "PNG")
    return buf.getvalue()


def _clean_classes(root: Path, classes: int = 5, per_class: int = 2) -> None:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i}.png").write_bytes(_png(value=40 * c + 10 * i))


def _deflated_zeros(chunks: int) -> bytes:
    """A raw deflate stream of `chunks` x 16 MiB of zeros, ~16 KB a chunk, made without deflating them all: after
    a full flush the compressor restarts, so one chunk's output repeats."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = c.compress(bytes(1 << 24)) + c.flush(zlib.Z_FULL_FLUSH)
    return chunk * chunks + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _raw_zip(path: Path, entries) -> None:
    """A zip written field by field, so headers may say what the data is not: entries are
    (name, deflated bytes, crc, declared uncompressed size, unix mode)."""
    local, central = bytearray(), bytearray()
    for name, data, crc, size, mode in entries:
        offset, encoded = len(local), name.encode()
        local += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0x21, crc, len(data), size,
                             len(encoded), 0) + encoded + data
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 8, 0, 0x21, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, mode << 16, offset) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def _entry(name: str, payload: bytes, mode: int = 0o100644):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, c.compress(payload) + c.flush(), zlib.crc32(payload), len(payload), mode


def _check_clean_failure(code: int, err: str, *wanted: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("maml-lab: error:")]
    assert len(errors) == 1, err
    for text in wanted:
        assert text in errors[0], err


# ----------------------------------------------------------------------------------------------------------------
# Through the CLI


def test_hostile_files_in_a_folder_are_skipped_and_named(tmp_path):
    data = tmp_path / "set"
    _clean_classes(data)
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png())
    os.mkfifo(data / "class0" / "pipe.png")  # read naively, the loader waits for a writer forever
    (data / "class1" / "zero.png").symlink_to("/dev/zero")  # read naively, until memory runs out
    (data / "class1" / "escape.png").symlink_to(outside)
    (data / "class1" / "alias.png").symlink_to(data / "class2" / "0.png")  # inside the set: used
    Image.new("1", (13000, 13000)).save(data / "class3" / "huge.png")  # ~20 KB, 169 M pixels declared
    with open(data / "class4" / "sparse.png", "wb") as f:  # 200 MB that take no disk
        f.truncate(200 << 20)
    bad = os.fsencode(data) + b"/caf\xe9"  # Latin-1, not UTF-8
    os.mkdir(bad)
    (Path(os.fsdecode(bad)) / "0.png").write_bytes(_png())
    assert (data / "class3" / "huge.png").stat().st_size < 64 << 10

    code, err, peak_kb = _cli([*TRAIN, "--data", data, "--run-dir", tmp_path / "run"], tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert peak_kb < PEAK_BUDGET_KB, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert "skipped 6 files (limits: 25 M pixels an image" in err
    for line in ("class0/pipe.png: a FIFO (named pipe), not a regular file",
                 "class1/zero.png: a link to outside the image set",
                 "class1/escape.png: a link to outside the image set",
                 "class3/huge.png: declares 13000x13000 pixels (169.0 M), over the limit of 25 M (--max-image-pixels)",
                 "class4/sparse.png: 200 MB, over the limit of 128 MB a file (--max-file-bytes)",
                 "caf\\xe9/: folder name is not valid UTF-8"):
        assert f"  {line}" in err, err
    assert "alias.png" not in err
    assert (tmp_path / "run" / "run.json").is_file()


def test_zip_bombs_are_refused_from_their_headers_and_read_bounded(tmp_path):
    entries = [_entry(f"set/class{c}/{i}.png", _png(value=40 * c + 10 * i)) for c in range(5) for i in range(2)]
    bomb = _deflated_zeros(192)  # 3 GiB of zeros in ~3 MB
    entries.append(("set/class0/bomb.png", bomb, 0, 3 * GIB, 0o100644))
    eight_mib = bytes(8 << 20)
    entries.append(_entry("set/class1/inflates.png", eight_mib))  # 8 MiB from ~8 KB: ratio ~1000
    liar = _deflated_zeros(4)  # 64 MiB of zeros whose header says 100 bytes
    entries.append(("set/class2/liar.png", liar, zlib.crc32(bytes(100)), 100, 0o100644))  # read: 100 zeros
    entries.append(_entry("set/class3/link.png", b"/dev/zero", mode=0o120777))  # a symlink stored in the zip
    path = tmp_path / "hostile.zip"
    _raw_zip(path, entries)
    assert path.stat().st_size < 4 << 20
    with zipfile.ZipFile(path) as z:  # what the headers say
        assert z.getinfo("set/class0/bomb.png").file_size == 3 * GIB

    code, err, peak_kb = _cli([*TRAIN, "--data", path, "--run-dir", tmp_path / "run"], tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert peak_kb < PEAK_BUDGET_KB, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert "skipped 4 files" in err, err
    assert "  set/class0/bomb.png: inflates to 3 GB, over the limit of 128 MB a file (--max-file-bytes)" in err, err
    assert re.search(r"set/class1/inflates\.png: inflates \d+x \([\d.]+ KB to 8 MB\), over the limit of 100x "
                     r"\(--max-zip-ratio\)", err), err
    assert "set/class2/liar.png: cannot decode: not an image format Pillow can read" in err, err
    assert "set/class3/link.png: a symbolic link inside the zip, not a regular file" in err, err


def test_image_size_beyond_memory_is_refused_before_anything_loads(tmp_path):
    data = tmp_path / "set"
    _clean_classes(data)
    code, err, peak_kb = _cli([*TRAIN, "--data", data, "--image-size", "4096", "--meta-batch-size", "32",
                               "--ways", "5", "--queries", "5"], tmp_path)
    _check_clean_failure(code, err, "image size 4096", "this needs about", "GB; the machine has")
    assert re.search(r"this needs about \d+ GB; the machine has \d+(\.\d)? GB$", err.strip()), err
    assert "loading" not in err  # refused from the config alone
    assert peak_kb < PEAK_BUDGET_KB
    assert not (tmp_path / "runs").exists()


def test_a_set_over_the_byte_limit_fails_in_one_line_and_leaves_no_run_folder(tmp_path):
    data = tmp_path / "set"
    _clean_classes(data)
    code, err, _ = _cli([*TRAIN, "--data", data, "--max-set-bytes", "4K"], tmp_path)
    _check_clean_failure(code, err, "10 images decoded at 1x28x28 would take 7.7 KB, over the limit of 4 KB",
                         "--max-set-bytes")
    assert not (tmp_path / "runs").exists()  # the default run folder's root is not even made


def test_a_set_with_nothing_usable_fails_in_one_line_and_leaves_no_run_folder(tmp_path):
    data = tmp_path / "set"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    os.mkfifo(data / "a" / "0.png")
    (data / "b" / "0.png").symlink_to("/dev/zero")
    code, err, _ = _cli([*TRAIN, "--data", data, "--run-dir", tmp_path / "run"], tmp_path)
    _check_clean_failure(code, err, "no usable classes", "2 skipped", "(first: a/0.png: a FIFO")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------
# In process: limits, flags, run folders


def test_limits_are_flags_and_raising_them_admits_a_large_image(tmp_path, capsys):
    data = tmp_path / "set"
    _clean_classes(data, classes=2, per_class=1)
    Image.new("1", (3000, 3000), 1).save(data / "class0" / "big.png")  # 9 M pixels
    low = load_image_set(data, use_cache=False, limits=LoadLimits(max_image_pixels=4_000_000))
    assert low.num_images == 2
    assert low.report.skipped == [("class0/big.png", "declares 3000x3000 pixels (9.0 M), over the limit of 4 M "
                                                     "(--max-image-pixels)")]
    assert low.report.limits["max_image_pixels"] == 4_000_000 and "4 M pixels an image" in low.report.limits_text()
    with LoadLimits(max_image_pixels=10_000_000).applied():  # what the CLI's flag does
        assert load_image_set(data, use_cache=False).num_images == 3
    assert load_image_set(data, use_cache=False).num_images == 3  # the default (25 M) admits it too

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-image-pixels N", "--max-file-bytes SIZE", "--max-zip-ratio X", "--max-set-bytes SIZE"):
        assert flag in out
    assert "read as untrusted data" in out
    assert parse_bytes("4G") == 4 * GIB and parse_bytes("512MB") == 512 << 20 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")
    assert main(["train", "--task", "images", "--max-set-bytes", "lots"]) == 2
    assert "not a size: 'lots'" in capsys.readouterr().err


def test_every_skipped_file_is_kept_in_the_report_though_twenty_are_shown(tmp_path):
    data = tmp_path / "set"
    _clean_classes(data, classes=2, per_class=1)
    for i in range(25):
        os.mkfifo(data / "class1" / f"p{i:02d}.png")
    s = load_image_set(data, use_cache=False)
    assert len(s.report.skipped) == 25
    lines = s.report.skipped_lines()
    assert len(lines) == 21 and lines[-1] == "and 5 more" and lines[0].startswith("class1/p00.png: a FIFO")


def test_non_utf8_file_names_are_skipped_not_fatal(tmp_path):
    data = tmp_path / "set"
    _clean_classes(data, classes=2, per_class=1)
    (Path(os.fsdecode(os.fsencode(data / "class0") + b"/\xff.png"))).write_bytes(_png())
    s = load_image_set(data, Preprocessing(size=(8, 8)), cache_dir=tmp_path / "cache")  # the cache key hashes names
    assert s.num_images == 2 and s.report.skipped == [("class0/\\xff.png", "name is not valid UTF-8")]


def test_decoded_set_is_checked_against_memory_before_allocating():
    with pytest.raises(MemoryNeedError, match=r"^huge: this needs about \d+ GB; the machine has"):
        check_memory(1 << 60, "huge")
    check_memory(1 << 20, "small")


def test_a_bad_run_path_fails_before_loading_and_a_failed_load_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "set"
    _clean_classes(data)
    (tmp_path / "file").write_text("not a folder")
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot create run folder" in err and "is not a folder" in err and "loading" not in err

    from maml_lab.core.training.config import ExperimentConfig

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    config = ExperimentConfig(task="images", data=str(empty), ways=2, shots=1, queries=1, iterations=1)
    with pytest.raises(ValueError, match="no usable classes"):
        TrainingSession.create(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    session = TrainingSession.create(ExperimentConfig(task="images", data=str(data), ways=2, shots=1, queries=1,
                                                      iterations=1), run_dir=tmp_path / "run")
    assert (session.folder.path / "config.toml").is_file()
