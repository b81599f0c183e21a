"""`stepvar generate --prompts` under torchrun on this CPU (gloo), against a single-process run of the same command.

Two ranks write every image exactly once, byte-identical to one process; killed mid-run (SIGTERM to
torchrun, which stops its workers as Ctrl-C does, or SIGKILL of torchrun and both ranks, as a crash
or an OOM killer does) and started again, the run makes only what is missing and leaves no partial
file. Slow (a torchrun start imports torch in every rank): `pytest -m slow tests/test_torchrun.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepvar.user_files import open_image_rgb

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "two blue squares", "a yellow triangle above a green circle", "three green squares",
           "a blue circle", "a green triangle", "four red squares", "a yellow circle left of a blue square"]
STEPVAR = Path(sys.executable).with_name("stepvar")  # the console script of the Python running the tests
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "STEPVAR_DEVICE": "cpu"}
ENV.pop("STEPVAR_MODEL", None)


def torchrun(prompts: Path, out: Path, *extra) -> list[str]:
    # `python -m torch.distributed.run` is what the `torchrun` console script runs; --standalone picks a free port.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(STEPVAR),
            "generate", "--prompts", str(prompts), "--samples", "2", "--out", str(out), *extra]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def leftovers(out: Path) -> list[str]:
    """Anything that is not a finished output: temporaries of atomic writes, a lock file."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("prompts") / "p.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    return f


@pytest.fixture(scope="module")
def single(prompt_file, tmp_path_factory) -> Path:
    """The same command in one process, with the ranks' thread count: CPU kernels split their sums by
    thread, so a run with 2 threads may differ in the last bits (and then in a sampled bit) from one with 1."""
    out = tmp_path_factory.mktemp("single") / "set"
    r = subprocess.run([str(STEPVAR), "generate", "--prompts", str(prompt_file), "--samples", "2", "--out", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(pngs(out)) == 16
    return out


def test_two_ranks_write_every_image_once_byte_identical_to_one_process(prompt_file, single, tmp_path):
    out = tmp_path / "set"
    r = subprocess.run(torchrun(prompt_file, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pngs(out) == pngs(single)
    summary = json.loads((out / "summary.json").read_text())
    # 16 images exist and the ranks wrote 16 in all: none was written twice.
    assert [rk["generated"] for rk in summary["ranks"]] == [8, 8] and summary["missing"] == 0
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("records/*.json"))]
    assert sorted((rec["prompt_index"], rec["sample_index"]) for rec in records) == [(p, s) for p in range(8) for s in range(2)]
    assert {rec["rank"] for rec in records} == {0, 1} and {rec["world_size"] for rec in records} == {2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["world_size"] == 2 and manifest["backend"] == "gloo"
    assert leftovers(out) == []


@pytest.mark.parametrize("how", ["sigterm-torchrun", "sigkill-all"])
def test_killed_mid_run_then_restarted_finishes_without_redoing_or_partial_files(prompt_file, single, tmp_path, how):
    out = tmp_path / "set"
    proc = subprocess.Popen(torchrun(prompt_file, out, "--batch-size", "1"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*.png"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if how == "sigterm-torchrun":
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    else:  # the launcher and both ranks at once, wherever they are (the ranks run in their own sessions)
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert 4 <= len(before) < 16, f"the kill came too late to test anything ({len(before)} images)"
    for p in before:  # every image present is whole: it decodes, and equals the single run's
        open_image_rgb(p)
        assert p.read_bytes() == (single / p.relative_to(out)).read_bytes()
    if how == "sigterm-torchrun":
        assert [x for x in leftovers(out) if x != ".stepvar.lock"] == []  # the workers removed their temporaries

    r = subprocess.run(torchrun(prompt_file, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_this_run"] == 16 - len(before) and summary["skipped_as_complete"] == len(before)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished images were not redone
    assert pngs(out) == pngs(single)
    assert leftovers(out) == []


def test_one_process_stopped_by_sigterm_exits_130_and_a_rerun_finishes(prompt_file, single, tmp_path):
    out = tmp_path / "set"
    cmd = [str(STEPVAR), "generate", "--prompts", str(prompt_file), "--samples", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert 3 <= len(before) < 16 and leftovers(out) == []
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    r = subprocess.run(cmd + ["--json"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["generated_this_run"] == 16 - len(before)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert pngs(out) == pngs(single) and leftovers(out) == []
