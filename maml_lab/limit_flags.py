"""The flags that raise the limits an image set is read under (core/tasks/imagelimits.py): one definition that
the CLI's train and eval (cli.py) and the app (app.py, `python main.py`) both take, so the loader's messages
("raise it with --max-set-bytes") hold for both.
"""

from __future__ import annotations

import argparse


def _size(text: str) -> int:
    from .core.tasks.imagelimits import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pixels(text: str) -> int:
    """A pixel count: 25000000, 25M or 2.5e7."""
    scale = 1_000_000 if text.strip().lower().endswith("m") else 1
    try:
        value = int(float(text.strip().rstrip("mM")) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 25000000 or 25M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


IMAGE_LIMIT_FLAGS = ("max_image_pixels", "max_file_bytes", "max_zip_ratio", "max_set_bytes")


def add_image_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that raise the limits an image set is read under (core/tasks/imagelimits.py)."""
    from .core.tasks.imagelimits import LoadLimits, format_bytes

    d = LoadLimits()
    g = parser.add_argument_group(
        "image-set limits", "an image set is read as untrusted data: files over these limits are skipped and named "
                            "in the load report, a set over --max-set-bytes is refused; raise them for sets that "
                            "truly are that large")
    g.add_argument("--max-image-pixels", type=_pixels, metavar="N",
                   help=f"most pixels (width x height) an image may declare, checked before decoding (default "
                        f"{d.max_image_pixels / 1e6:g}M)")
    g.add_argument("--max-file-bytes", type=_size, metavar="SIZE",
                   help=f"largest file, or zip entry once inflated, e.g. 512M (default "
                        f"{format_bytes(d.max_file_bytes)})")
    g.add_argument("--max-zip-ratio", type=_ratio, metavar="X",
                   help=f"most a zip entry over 1 MB may inflate, uncompressed / compressed size (default "
                        f"{d.max_zip_ratio:g})")
    g.add_argument("--max-set-bytes", type=_size, metavar="SIZE",
                   help=f"largest decoded set, images x channels x size x size bytes, e.g. 16G (default "
                        f"{format_bytes(d.max_set_bytes)})")


def image_limits_from(args):
    """The image-set limits the flags ask for (the defaults where unset)."""
    from dataclasses import replace

    from .core.tasks.imagelimits import LoadLimits

    return replace(LoadLimits(), **{k: getattr(args, k) for k in IMAGE_LIMIT_FLAGS
                                    if getattr(args, k, None) is not None})
