"""Killed at any moment, nothing is lost: bench, compare, train and export run in subprocesses
(tiny models, one thread) and are killed while they work. Every file left must be complete and
parseable, every finished row or checkpoint kept, and a resumed training run must equal an
uninterrupted one bit for bit.

The default suite kills each command once at a moment chosen by watching its output; the tests
marked slow repeat that many times at random moments.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stepvar.eval.bench import validate_rows
from stepvar.errors import CheckpointError, ConfigError
from stepvar.run_lock import LOCK_NAME
from stepvar.training import export_embedded, load_embedded, train_transformer
from stepvar.training.common import read_training_checkpoint
from stepvar_cli.app import app

HERE = Path(__file__).resolve().parent
WORKER = HERE / "kill_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "stepvar_cli.app"]
TINY = ["--model", "tiny", "--device", "cpu"]
TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|new|old|probe)$")  # what atomic writes leave when killed mid-write
WAIT_S = 120  # generous: the suite may share a busy machine

runner = CliRunner()


# ---- helpers -------------------------------------------------------------------------------------
def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, ready, what: str) -> None:
    """Poll until ready() is true; fail (with the process's output) if it ends first or takes too long."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=WAIT_S)
    return proc.returncode


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def timed_runs(out: Path) -> int:
    report = read_json(out / "report.json")
    return sum(len(r["latency_runs"]) for r in report["results"]) if report else 0


def assert_complete(directory: Path) -> dict[str, object]:
    """Every file a reader would see parses in full; hidden files are only the lock and temporaries."""
    parsed = {}
    for p in sorted(directory.iterdir()):
        if p.name.startswith("."):
            assert p.name == LOCK_NAME or TEMP.match(p.name), f"unexpected hidden file {p.name}"
            continue
        if p.suffix == ".json":
            parsed[p.name] = json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                parsed[p.name] = list(csv.DictReader(f))
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
            parsed[p.name] = True
        elif p.suffix == ".md":
            parsed[p.name] = p.read_text(encoding="utf-8")
        elif p.suffix == ".pt":
            parsed[p.name] = read_training_checkpoint(p)
        elif p.suffix == ".jsonl":
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
            parsed[p.name] = [json.loads(ln) for ln in lines[:-1]]  # the last line may be torn by the kill
        else:
            pytest.fail(f"unexpected file {p.name}")
    return parsed


# ---- bench ---------------------------------------------------------------------------------------
def bench_cmd(out: Path, repeats: int = 200) -> list[str]:
    return [*CLI, "bench", *TINY, "--resolution", "256", "--methods", "dense,stepvar", "--keep", "0.5",
            "--repeats", str(repeats), "--warmup", "0", "--out", str(out)]


def check_bench_left(out: Path, runs_before_kill: int) -> dict:
    files = assert_complete(out)
    report = files["report.json"]
    rows = report["results"]
    assert validate_rows(rows) == []
    assert sum(len(r["latency_runs"]) for r in rows) >= runs_before_kill  # every timed run seen is still there
    assert [r["label"] for r in files["report.csv"]] == [r["label"] for r in rows]
    return report


def test_bench_sigkill_keeps_timed_runs_and_a_second_bench_is_refused_then_takes_over(tmp_path):
    out = tmp_path / "bench"
    proc = start(bench_cmd(out))
    wait_for(proc, lambda: timed_runs(out) >= 3, "three timed runs on disk")
    # A second bench on the same --out while the first runs: refused with one line.
    second = runner.invoke(app, ["bench", *TINY, "--resolution", "256", "--methods", "dense", "--repeats", "1",
                                 "--warmup", "0", "--out", str(out)])
    assert second.exit_code == 2 and second.stderr.count("\n") == 1, second.output
    assert f"pid {proc.pid}" in second.stderr and "another stepvar run" in second.stderr
    seen = timed_runs(out)
    assert kill(proc) == -signal.SIGKILL
    report = check_bench_left(out, max(seen, 3))
    assert report["status"] == "running"  # SIGKILL: no chance to say more, but every row is whole
    assert all(r["status"].startswith("partial: ") for r in report["results"])
    # The killed run's lock is stale: the next bench takes it over and says so.
    again = runner.invoke(app, ["bench", *TINY, "--resolution", "256", "--methods", "dense", "--repeats", "1",
                                "--warmup", "0", "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert f"took over the lock on {out} left by pid {proc.pid}" in again.stderr
    assert not (out / LOCK_NAME).exists() and not [p for p in out.iterdir() if TEMP.match(p.name)]


def test_bench_sigterm_stops_like_ctrl_c_and_marks_rows_interrupted(tiny_pipe, tmp_path, monkeypatch):
    import stepvar.eval.bench as bench_mod
    from stepvar.interrupts import sigterm_as_interrupt

    calls, real = [], bench_mod.run_once

    def run_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # two timed runs of each configuration are on disk by now
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_mod, "run_once", run_once)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        bench_mod.run_bench(tiny_pipe, [256], ["stepvar"], [0.5], repeats=5, warmup=0, out_dir=tmp_path)
    report = check_bench_left(tmp_path, 3)
    assert report["status"] == "interrupted"
    assert [r["status"] for r in report["results"]] == ["interrupted: 1/5 timed runs", "interrupted: 2/5 timed runs"]
    assert not (tmp_path / LOCK_NAME).exists() and (tmp_path / "report.md").is_file()
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


@pytest.mark.slow
def test_bench_killed_at_random_moments_many_times(tmp_path):
    rng = random.Random(0)
    for i in range(12):
        out = tmp_path / f"b{i}"
        proc = start(bench_cmd(out, repeats=4))
        wait_for(proc, lambda: (out / "report.json").exists(), "a first row")
        time.sleep(rng.uniform(0, 0.6))
        seen = timed_runs(out)
        kill(proc, rng.choice([signal.SIGKILL, signal.SIGTERM]))
        check_bench_left(out, seen)


# ---- compare -------------------------------------------------------------------------------------
def compare_cmd(out: Path, prompts: Path) -> list[str]:
    return [*CLI, "compare", *TINY, "--prompts", str(prompts), "--methods", "dense,stepvar", "--keep", "0.5",
            "--warmup", "0", "--out", str(out)]


def prompt_file(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a red circle number {i}\n" for i in range(n)), encoding="utf-8")
    return path


def compare_rows(out: Path) -> list[dict]:
    report = read_json(out / "report.json")
    return report["results"] if report else []


def check_compare_left(out: Path, rows_before_kill: int) -> None:
    files = assert_complete(out)
    rows = files["report.json"]["results"]
    assert len(rows) >= rows_before_kill
    for r in rows:  # an image is on disk, whole, before its row is
        assert r["status"] == "ok" and files[r["image"]] is True


def test_compare_sigkill_keeps_finished_rows_with_their_images(tmp_path):
    out = tmp_path / "cmp"
    proc = start(compare_cmd(out, prompt_file(tmp_path)))
    wait_for(proc, lambda: len(compare_rows(out)) >= 3, "three rows on disk")
    seen = len(compare_rows(out))
    kill(proc)
    check_compare_left(out, seen)


@pytest.mark.slow
def test_compare_killed_at_random_moments_many_times(tmp_path):
    rng, prompts = random.Random(1), prompt_file(tmp_path, 6)
    for i in range(12):
        out = tmp_path / f"c{i}"
        proc = start(compare_cmd(out, prompts))
        wait_for(proc, lambda: (out / "report.json").exists(), "a first row")
        time.sleep(rng.uniform(0, 0.8))
        seen = len(compare_rows(out))
        kill(proc, rng.choice([signal.SIGKILL, signal.SIGTERM]))
        check_compare_left(out, seen)


# ---- train ---------------------------------------------------------------------------------------
def train_cmd(out: Path, steps: int) -> list[str]:
    return [sys.executable, str(WORKER), "train", str(out), str(steps)]


def checkpoint_step(out: Path) -> int:
    try:
        return int(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not there yet (or being renamed into place)
        return 0


def uninterrupted(tmp_path: Path, steps: int) -> dict:
    """The reference run, in this process on one thread like the worker."""
    sys.path.insert(0, str(HERE))
    from kill_worker import TRAIN_CFG

    from test_training import tiny_gpt_cfg, tiny_vae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_transformer(tiny_gpt_cfg(**TRAIN_CFG), tmp_path / "full", steps, vae=tiny_vae())
    finally:
        torch.set_num_threads(threads)
    return read_training_checkpoint(tmp_path / "full")


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name in a["modules"]:
        sa, sb = a["modules"][name], b["modules"][name]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name} differs"
    for k, v in a["optimizer"]["state"].items():
        assert all(torch.equal(v[s], b["optimizer"]["state"][k][s]) for s in v)


def kill_train_until_done(tmp_path: Path, steps: int, kills: int, rng: random.Random) -> Path:
    out, kept = tmp_path / "killed", 0
    for _ in range(kills):
        proc = start(train_cmd(out, steps))
        wait_for(proc, lambda: checkpoint_step(out) > kept, "a new checkpoint")
        time.sleep(rng.uniform(0, 0.4))
        kill(proc)
        files = assert_complete(out)
        step = files["checkpoint.pt"]["step"]
        assert step >= kept  # a checkpoint once written is never lost
        assert files["config.json"]["kind"] == "transformer"
        kept = step
        if step == steps:
            break
    proc = start(train_cmd(out, steps))
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err
    return out


def test_train_killed_then_resumed_equals_uninterrupted(tmp_path):
    steps = 4
    out = kill_train_until_done(tmp_path, steps, kills=1, rng=random.Random(0))
    assert_same_state(read_training_checkpoint(out), uninterrupted(tmp_path, steps))
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, steps + 1))


def test_resume_drops_a_torn_log_line_and_reads_past_a_torn_config(tmp_path):
    from stepvar.training import train_vae
    from stepvar.training.common import read_run_config

    from test_training import tiny_vae_cfg

    run = tmp_path / "vae"
    train_vae(tiny_vae_cfg(), run, steps=1)
    with open(run / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 2, "loss": 0.1')  # what a kill in the middle of an append leaves
    config = (run / "config.json").read_text()
    (run / "config.json").write_text(config[: len(config) // 2])  # torn by a tool that wrote it in place
    stored = read_run_config(run)  # what `train --resume` reads its LR curve from
    assert stored["kind"] == "vae" and stored["optim"] == json.loads(config)["optim"]
    notes = []
    train_vae(tiny_vae_cfg(), run, steps=2, resume=True, on_note=notes.append)
    assert len(notes) == 1 and "dropped its torn last line" in notes[0]
    assert [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "config.json").read_text())["kind"] == "vae"


@pytest.mark.slow
def test_train_killed_at_random_moments_many_times(tmp_path):
    steps = 12
    out = kill_train_until_done(tmp_path, steps, kills=10, rng=random.Random(2))
    assert_same_state(read_training_checkpoint(out), uninterrupted(tmp_path, steps))


# ---- export --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from test_training import tiny_gpt_cfg, tiny_vae

    base = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        train_transformer(tiny_gpt_cfg(seed=seed), base / name, steps=1, vae=tiny_vae())
        export_embedded(base / name, base / f"export_{name}")
    return base


def export_hashes_of(directory: Path) -> dict:
    return json.loads((directory / "model.json").read_text())["sha256"]


def check_export_left(out: Path, expected: list[dict]) -> None:
    """The export directory is one of the complete exports, and loads."""
    assert out.is_dir(), f"{out} vanished"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "text_encoder.safetensors",
                                                     "transformer.safetensors", "vae.safetensors"]
    assert export_hashes_of(out) in expected
    load_embedded(out)  # checks every file against model.json's hashes


def test_export_killed_leaves_old_or_new_whole(tmp_path, two_runs):
    out = tmp_path / "export"
    expected = [export_hashes_of(two_runs / "export_a"), export_hashes_of(two_runs / "export_b")]
    proc = start([sys.executable, str(WORKER), "export", str(two_runs / "a"), str(two_runs / "b"), str(out), "1000"])
    wait_for(proc, lambda: (out / "model.json").is_file(), "a first export")
    time.sleep(0.1)
    kill(proc)
    check_export_left(out, expected)
    export_embedded(two_runs / "b", out)  # the next export clears whatever the kill left beside it
    assert export_hashes_of(out) == expected[1]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_mixed_export_is_refused_with_one_line(tmp_path, two_runs):
    mixed = tmp_path / "mixed"
    shutil.copytree(two_runs / "export_b", mixed)
    shutil.copy(two_runs / "export_a" / "transformer.safetensors", mixed / "transformer.safetensors")
    with pytest.raises(CheckpointError, match="transformer.safetensors is not the file this model.json was exported"):
        load_embedded(mixed)
    # An export from before the hashes (no "sha256" in model.json) still loads, as the shipped one does.
    meta = json.loads((mixed / "model.json").read_text())
    del meta["sha256"]
    (mixed / "model.json").write_text(json.dumps(meta))
    load_embedded(mixed)


def test_export_refuses_to_replace_a_directory_holding_other_files(tmp_path, two_runs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds files an export does not write"):
        export_embedded(two_runs / "a", out)
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_export_killed_at_random_moments_many_times(tmp_path, two_runs):
    rng, out = random.Random(3), tmp_path / "export"
    expected = [export_hashes_of(two_runs / "export_a"), export_hashes_of(two_runs / "export_b")]
    for _ in range(15):
        proc = start([sys.executable, str(WORKER), "export", str(two_runs / "a"), str(two_runs / "b"), str(out), "1000"])
        wait_for(proc, lambda: (out / "model.json").is_file(), "an export")
        time.sleep(rng.uniform(0, 0.5))
        kill(proc)
        check_export_left(out, expected)


# ---- validate first, write last --------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["bench", *TINY, "--methods", "nosuch"],
    ["bench", *TINY, "--resolution", "300"],
    ["compare", *TINY, "--prompt", "a red circle", "--methods", "nosuch"],
    ["compare", *TINY, "--prompt", "a red circle", "--resolution", "300"],
    ["compare", *TINY, "--prompt", "a red circle", "--cfg", "1,2"],
], ids=["bench-method", "bench-resolution", "compare-method", "compare-resolution", "compare-cfg-list"])
def test_bench_and_compare_create_out_only_after_checking_options(tmp_path, args):
    out = tmp_path / "new" / "out"
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "new").exists()


def test_generate_checks_the_sidecar_before_writing_the_image(tmp_path):
    (tmp_path / "o.json").mkdir()  # the sidecar cannot be written
    r = runner.invoke(app, ["generate", *TINY, "--prompt", "a red circle", "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "o.json" in r.stderr, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_image_and_sidecar_appear_together_or_not_at_all(tmp_path, monkeypatch):
    import numpy as np

    import stepvar.io as sio

    image = np.zeros((8, 8, 3), np.uint8)
    monkeypatch.setattr(sio.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    from stepvar.errors import StepvarError

    # A full disk while writing is the user's problem, named with the path (one line, exit 2).
    with pytest.raises(StepvarError, match="cannot write .*No space left on device"):
        sio.save_image_with_sidecar(tmp_path / "o.png", image, None, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # the image was complete, yet it is not left alone
    monkeypatch.undo()
    png, side = sio.save_image_with_sidecar(tmp_path / "o.png", image, {"prompt": "x"}, {"a": 1})
    assert json.loads(side.read_text()) == {"a": 1} and sio.read_png_metadata(png) == {"prompt": "x"}
