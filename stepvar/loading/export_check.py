"""An export directory is one unit: model.json records the SHA-256 of every weight file it ships,
and loading refuses a directory whose files are not the ones its model.json was written with
(a transformer from one export beside the text encoder of another, or a damaged file).

Exports written before the hashes existed (the field is absent) still load unchecked.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import CheckpointError

HASH_FIELD = "sha256"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def export_hashes(directory: str | os.PathLike, files: dict[str, str]) -> dict[str, str]:
    """{part: sha256} of the files {part: file name} in `directory`, for model.json."""
    return {part: file_sha256(Path(directory) / name) for part, name in files.items()}


def check_export_hashes(directory: str | os.PathLike, meta: dict, files: dict[str, str]) -> None:
    """Raise CheckpointError (one line) unless every file matches the hash model.json recorded for it."""
    recorded = meta.get(HASH_FIELD)
    if recorded is None:
        return  # an export from before the hashes: nothing to check against
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{directory}: model.json's {HASH_FIELD!r} must map each file to its hash")
    for part, name in files.items():
        want = recorded.get(part)
        if want is None:
            raise CheckpointError(f"{directory}: model.json records no {HASH_FIELD} for {name}")
        try:
            got = file_sha256(Path(directory) / name)
        except OSError as exc:
            raise CheckpointError(f"{directory}: cannot read {name}: {exc.strerror}") from None
        if got != want:
            raise CheckpointError(f"{directory}: {name} is not the file this model.json was exported with "
                                  "(mixed or damaged export); export it again with `stepvar train export`")
