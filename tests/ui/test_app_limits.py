"""The app's image-set limit flags (`python main.py --max-set-bytes 16G`): the CLI's flags, applied to the whole
process so the worker threads that load image sets see them; a bad value is one line and exit 2."""

import sys
import threading

import pytest

from maml_lab import app
from maml_lab.core.tasks.imagelimits import GIB, MIB, LoadLimits, current_limits, set_default_limits


@pytest.fixture(autouse=True)
def builtin_limits():
    set_default_limits(None)
    yield
    set_default_limits(None)


def _seen_by_a_worker_thread() -> LoadLimits:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(current_limits()))
    worker.start()
    worker.join()
    return seen[0]


def test_app_flags_raise_the_limits_for_every_thread(monkeypatch, capsys):
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):  # main() parses, applies, then stops here
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert app.main(["--max-set-bytes", "16G", "--max-file-bytes", "512M", "--max-image-pixels", "50M",
                     "--max-zip-ratio", "300"]) == 2
    assert "no display" in capsys.readouterr().err
    expected = LoadLimits(max_image_pixels=50_000_000, max_file_bytes=512 * MIB, max_zip_ratio=300.0,
                          max_set_bytes=16 * GIB)
    assert current_limits() == expected
    assert _seen_by_a_worker_thread() == expected


def test_unset_flags_keep_the_defaults_and_applied_still_overrides():
    app.apply_image_limits(app.build_parser().parse_args(["--max-set-bytes", "8G"]))
    assert _seen_by_a_worker_thread() == LoadLimits(max_set_bytes=8 * GIB)
    with LoadLimits(max_set_bytes=GIB).applied():  # the CLI's per-command limits sit on top of the process's
        assert current_limits().max_set_bytes == GIB
    assert current_limits().max_set_bytes == 8 * GIB


@pytest.mark.parametrize("flag,value,says", [("--max-set-bytes", "16X", "not a size"),
                                             ("--max-zip-ratio", "0.5", "must be >= 1"),
                                             ("--max-image-pixels", "lots", "not a pixel count"),
                                             ("--max-file-bytes", "0", "at least 1 byte")])
def test_a_bad_limit_is_one_line_and_exit_2(capsys, flag, value, says):
    assert app.main([flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and says in err
    assert current_limits() == LoadLimits()


def test_the_flags_are_the_clis_definition():
    from maml_lab.cli import build_parser as cli_parser

    def limit_help(parser, flag):
        return next(a.help for a in parser._actions if flag in a.option_strings)

    train = next(a for a in cli_parser()._actions if getattr(a, "choices", None) and "train" in a.choices)
    for flag in ("--max-image-pixels", "--max-file-bytes", "--max-zip-ratio", "--max-set-bytes"):
        assert limit_help(app.build_parser(), flag) == limit_help(train.choices["train"], flag)
