"""The one way stepvar reads a file a user hands it: prompt lists, JSON, YAML, images, checkpoints.

Every problem with such a file (missing, not a regular file, not UTF-8, not parseable, the wrong
shape) becomes a UserFileError whose message is one line naming the file and what is wrong, so
the CLI can print it and exit 2. Nothing here ever opens a FIFO or a device for reading (that
would block forever), and YAML is read with the safe loader only: a tag that would build a
Python object is refused, never run.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from .errors import StepvarError
from .validate import shown

# A prompt list or a preset is small; a multi-GB "prompt file" is a mistake, not something to load.
MAX_TEXT_BYTES = 64 * 2**20


class UserFileError(StepvarError):
    """A file given by the user that cannot be used; the message names it."""


def _name(path: str | os.PathLike) -> str:
    return shown(os.fspath(path), 200)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path of an existing regular file (symlinks followed); decided by stat, never by opening it."""
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise UserFileError(f"{what} {_name(p)}: no such file") from None
    except OSError as exc:
        raise UserFileError(f"{what} {_name(p)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise UserFileError(f"{what} {_name(p)}: is {_kind(mode)}, expected a regular file")
    return p


def read_bytes(path: str | os.PathLike, what: str = "file", limit: int = MAX_TEXT_BYTES) -> bytes:
    p = check_regular_file(path, what)
    try:
        size = p.stat().st_size
        if size > limit:
            raise UserFileError(f"{what} {_name(p)}: {size} bytes is too large (at most {limit})")
        with open(p, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise UserFileError(f"{what} {_name(p)}: cannot read ({exc.strerror or exc})") from None


def decode_utf8(data: bytes, where: str) -> str:
    """UTF-8 (a leading BOM is allowed); UTF-16 and other encodings are named, not guessed."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserFileError(f"{where}: is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserFileError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    data = read_bytes(path, what)
    text = decode_utf8(data, f"{what} {_name(path)}")
    if "\x00" in text:
        raise UserFileError(f"{what} {_name(path)}: holds NUL characters (a binary file?)")
    return text


def read_lines(path: str | os.PathLike, what: str = "prompt file") -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that are neither blank nor '#' comments."""
    out = []
    for n, line in enumerate(read_text(path, what).splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((n, line))
    if not out:
        raise UserFileError(f"{what} {_name(path)}: holds no prompt")
    return out


def read_json(path: str | os.PathLike, what: str = "JSON file", expect: type = dict) -> Any:
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserFileError(f"{what} {_name(path)}: not valid JSON ({shown(str(exc), 120)})") from None
    if not isinstance(data, expect):
        raise UserFileError(f"{what} {_name(path)}: holds a JSON {_json_kind(data)}, expected a JSON {_json_kind(expect())}")
    return data


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def parse_yaml(text: str, where: str) -> Any:
    """A YAML value with the safe loader; the error names `where` and the problem, in one line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = shown(str(getattr(exc, "problem", "") or exc), 120)
        raise UserFileError(f"{where}: YAML tag refused ({tag}); only plain values are allowed") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserFileError(f"{where}: not valid YAML ({shown(str(problem), 120)}{at})") from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "preset file") -> dict:
    data = parse_yaml(read_text(path, what), f"{what} {_name(path)}")
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UserFileError(f"{what} {_name(path)}: must be a YAML mapping of names to values")
    return data


def open_image_rgb(path: str | os.PathLike, what: str = "image"):
    """(RGB uint8 array, the PNG's text chunks) of an image file, fully decoded.

    A truncated file, a file that is not an image, and a decompression bomb (more pixels than
    Pillow's safety limit) are one-line errors; nothing is decoded before the size is known.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = check_regular_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.load()
                text = dict(getattr(img, "text", {}) or {})
                return np.asarray(img.convert("RGB")), text
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserFileError(f"{what} {_name(p)}: too many pixels (a decompression bomb?); refused") from None
    except UnidentifiedImageError:
        raise UserFileError(f"{what} {_name(p)}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports truncated / corrupt data so
        raise UserFileError(f"{what} {_name(p)}: cannot decode ({shown(str(exc), 120)}; truncated or corrupt?)") from None


def make_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create an output directory (and parents); a file in the way or an OS refusal is a user error."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserFileError(f"{what} {_name(p)}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFileError(f"{what} {_name(p)}: cannot create the directory ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserFileError(f"{what} {_name(p)}: directory is not writable")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check, without creating anything, that `path` can become an output directory."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise UserFileError(f"{what} {_name(p)}: exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserFileError(f"{what} {_name(p)}: directory is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserFileError(f"{what} {_name(p)}: {_name(parent)} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserFileError(f"{what} {_name(p)}: cannot create it inside {_name(parent)} (not writable)")
    return p
