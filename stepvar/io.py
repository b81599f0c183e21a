"""Writing outputs so that nothing is ever half-written: temporary file, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, PngImagePlugin

from .errors import StepvarError
from .validate import shown

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the body succeeds."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise StepvarError(f"output directory does not exist: {shown(directory)}")
    if not os.access(directory, os.W_OK):
        raise StepvarError(f"output directory is not writable: {shown(directory)}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StepvarError(f"cannot write {shown(path)}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it: no torn file after a crash
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should look like any other file
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a file size limit, a vanished directory: the user's to fix
            raise StepvarError(f"cannot write {shown(path)}: {exc.strerror or exc}") from None
        raise


def check_output_path(path: str | Path, suffixes: dict[str, str] | None = None) -> Path:
    """Fail early (before any compute) on an output path that cannot be written."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise StepvarError(f"unsupported output type {shown(path.suffix or '(none)', 40)!r} for {shown(path)}; "
                           f"use {', '.join(suffixes)}")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise StepvarError(f"output directory does not exist: {shown(directory)}")
    if not os.access(directory, os.W_OK):
        raise StepvarError(f"output directory is not writable: {shown(directory)}")
    if path.is_dir():
        raise StepvarError(f"output path is a directory: {shown(path)}")
    try:  # os.access trusts permission bits; only creating a file shows that a file can be created here
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise StepvarError(f"cannot write {shown(path)}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _write_image(tmp: Path, fmt: str, image_HW3: np.ndarray, metadata: dict | None) -> None:
    img = Image.fromarray(np.ascontiguousarray(image_HW3), mode="RGB")
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (metadata or {}).items():
            info.add_text(f"stepvar:{key}", value if isinstance(value, str) else json.dumps(value))
        img.save(tmp, format="PNG", pnginfo=info)
    else:
        img.save(tmp, format="JPEG", quality=95)


def save_image(path: str | Path, image_HW3: np.ndarray, metadata: dict | None = None) -> Path:
    """PNG (with settings in text chunks) or JPEG, RGB, written atomically."""
    path = check_output_path(path, IMAGE_SUFFIXES)
    with atomic_path(path) as tmp:
        _write_image(tmp, IMAGE_SUFFIXES[path.suffix.lower()], image_HW3, metadata)
    return path


def sidecar_path(image_path: str | Path) -> Path:
    return Path(image_path).with_suffix(".json")


def check_image_outputs(path: str | Path) -> tuple[Path, Path]:
    """The image path and its .json sidecar, both checked writable before any compute."""
    path = check_output_path(path, IMAGE_SUFFIXES)
    return path, check_output_path(sidecar_path(path))


def save_image_with_sidecar(path: str | Path, image_HW3: np.ndarray, metadata: dict | None, record: dict) -> tuple[Path, Path]:
    """The image and its .json sidecar: both are fully written to temporary files before either
    is renamed into place, so a failure while writing leaves neither."""
    path, side = check_image_outputs(path)
    with atomic_path(side) as side_tmp, atomic_path(path) as tmp:
        _write_image(tmp, IMAGE_SUFFIXES[path.suffix.lower()], image_HW3, metadata)
        side_tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path, side


def save_json(path: str | Path, data: dict) -> Path:
    path = check_output_path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def save_text(path: str | Path, text: str) -> Path:
    path = check_output_path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_png_metadata(path: str | Path) -> dict:
    from .user_files import open_image_rgb

    _, text = open_image_rgb(path, "image")
    return {k.split(":", 1)[1]: v for k, v in text.items() if k.startswith("stepvar:")}
