"""One writer per output directory, and whole-directory replacement (the mechanisms under the kill tests)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import stepvar.atomic_dir as atomic_dir
from stepvar.atomic_dir import atomic_directory
from stepvar.run_lock import LOCK_NAME, OutputLocked, check_unlocked, output_lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    with output_lock(tmp_path) as d:
        assert d == tmp_path and (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid())]
        with pytest.raises(OutputLocked, match=r"being written by another stepvar run \(pid \d+\)"):
            with output_lock(tmp_path):
                pass
        with pytest.raises(OutputLocked):
            check_unlocked(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
    check_unlocked(tmp_path)  # free again


def test_a_stale_lock_is_taken_over_and_its_temporaries_removed(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(f"{pid}\n")
    (tmp_path / ".report.json.ab12cd_9.tmp").write_text('{"torn')  # atomic_path's temporary, never renamed
    (tmp_path / ".keep").write_text("user file")
    (tmp_path / "notes.tmp").write_text("user file")
    notes = []
    with output_lock(tmp_path, on_note=notes.append):
        pass
    assert notes == [f"took over the lock on {tmp_path} left by pid {pid}, which is no longer running",
                     f"removed 1 unfinished temporary file(s) a killed run left in {tmp_path}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "notes.tmp"]


@pytest.mark.parametrize("can_exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(atomic_dir, "exchange", lambda a, b: False)
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as new:
            (new / "new.txt").write_text("half")
            raise RuntimeError("failed while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (target / "old.txt").read_text() == "old"
    with atomic_directory(target) as new:
        (new / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_training_run_is_refused_a_directory_another_run_writes(tmp_path):
    from stepvar.training import train_vae

    from test_training import tiny_vae_cfg

    with output_lock(tmp_path):
        with pytest.raises(OutputLocked):
            train_vae(tiny_vae_cfg(), tmp_path, steps=1)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "log.jsonl").exists()
