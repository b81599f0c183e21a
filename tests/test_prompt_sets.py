"""Prompt sets (`generate --prompts`): reading, seeds, GenEval's layout, batches that equal single runs,
resuming, interrupting, and the memory options (--offload). All on the embedded model, one process;
tests/test_torchrun.py runs the same command under torchrun."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stepvar.batch_generate import image_path, record_path
from stepvar.prompt_sets import read_prompt_set, sample_seed
from stepvar.user_files import UserFileError, open_image_rgb
from stepvar_cli.app import app

PROMPTS = ["a red circle", "two blue squares", "a yellow triangle above a green circle"]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"STEPVAR_MODEL": None, "STEPVAR_DEVICE": "cpu"})


def pngs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def hidden(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*") if p.name != ".stepvar.lock")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "p.txt"
    f.write_text("# a comment\n" + "\n\n".join(PROMPTS) + "\n")
    return f


@pytest.fixture(scope="module")
def reference(prompt_file, tmp_path_factory):
    """3 prompts x 2 samples, one image at a time: what every other run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "set"
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--batch-size", 1, "--out", out, "--seed", 7, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_text_and_geneval_jsonl_sets_are_read_with_their_metadata(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# header\na red circle\n\n  two blue squares  \n")
    assert [(e.index, e.prompt, e.metadata) for e in read_prompt_set(txt)] == [
        (0, "a red circle", {"prompt": "a red circle"}), (1, "two blue squares", {"prompt": "two blue squares"})]
    jsonl = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
            {"tag": "counting", "include": [{"class": "square", "count": 2}], "prompt": "two blue squares"}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    entries = read_prompt_set(jsonl)
    assert [e.prompt for e in entries] == ["a red circle", "two blue squares"]
    assert [e.metadata for e in entries] == rows  # the whole object travels to OUT/NNNNN/metadata.jsonl


def test_a_torn_jsonl_line_is_named_by_its_number(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"prompt": "a red circle"}\n\n{"prompt": "two blue squares"\n')
    with pytest.raises(UserFileError, match=r"line 3 is not valid JSON"):
        read_prompt_set(f)


def test_sample_seeds_depend_only_on_the_seed_the_prompt_and_the_sample():
    seeds = {sample_seed(7, p, s) for p in range(50) for s in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2**62 for s in seeds)
    assert sample_seed(7, 3, 1) == sample_seed(7, 3, 1) != sample_seed(8, 3, 1)
    assert sample_seed(0, 1, 0) != sample_seed(0, 0, 1)


def test_layout_manifest_records_and_seeds(reference, prompt_file):
    out, summary = reference
    assert summary["complete"] == summary["images"] == 6 and summary["generated_this_run"] == 6
    assert sorted(pngs(out)) == [f"{p:05d}/samples/{s:04d}.png" for p in range(3) for s in range(2)]
    assert json.loads((out / "00002" / "metadata.jsonl").read_text()) == {"prompt": PROMPTS[2]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["samples"] == 2 and manifest["seed"] == 7
    assert manifest["settings"]["model"] == "toy" and manifest["settings"]["pruning"]["method"] == "dense"
    assert manifest["world_size"] == 1 and manifest["ranks"][0]["generated"] == 6
    record = json.loads(record_path(out, 1, 1).read_text())
    assert record["seed"] == sample_seed(7, 1, 1) and record["prompt"] == PROMPTS[1]
    assert record["memory"]["peak_gpu_memory_bytes"] is None  # a CPU run: no GPU memory to report
    assert record["memory"]["kv_cache_bytes"] > 0
    _, chunks = open_image_rgb(image_path(out, 1, 1))
    assert chunks["stepvar:seed"] == str(sample_seed(7, 1, 1)) and chunks["stepvar:prompt"] == PROMPTS[1]
    assert hidden(out) == []


def test_batched_rows_are_the_images_made_alone(reference, prompt_file, tmp_path):
    """Batch 4 over 6 items (a batch of 4 and one of 2) gives the same PNG bytes as one at a time, and an
    image is the one `generate --prompt P --seed S` makes with its recorded seed (same pixels)."""
    ref, _ = reference
    out = tmp_path / "b4"
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--batch-size", 4, "--out", out, "--seed", 7)
    assert r.exit_code == 0, r.output
    assert pngs(out) == pngs(ref)
    alone = tmp_path / "alone.png"
    r = run("generate", "--prompt", PROMPTS[2], "--seed", sample_seed(7, 2, 1), "--out", alone)
    assert r.exit_code == 0, r.output
    assert np.array_equal(open_image_rgb(alone)[0], open_image_rgb(image_path(ref, 2, 1))[0])


def test_rerun_skips_complete_images_and_removes_a_killed_runs_temporaries(reference, prompt_file, tmp_path):
    import shutil

    ref, _ = reference
    out = tmp_path / "set"
    shutil.copytree(ref, out)
    image_path(out, 1, 0).unlink()  # a missing image: its record alone does not make it complete
    stale = image_path(out, 2, 1).parent / ".0001.png.abcd1234.tmp"
    stale.write_bytes(b"half a png")  # what a SIGKILL in the middle of a write leaves
    image_path(out, 2, 1).unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--out", out, "--seed", 7, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["generated_this_run"], summary["skipped_as_complete"], summary["missing"]) == (2, 4, 0)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished images were not redone
    assert pngs(out) == pngs(ref) and hidden(out) == []
    # More samples later: the first two of each prompt stay, the third is made.
    r = run("generate", "--prompts", prompt_file, "--samples", 3, "--out", out, "--seed", 7, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["generated_this_run"] == 3
    assert {k: v for k, v in pngs(out).items() if not k.endswith("0002.png")} == pngs(ref)


def test_ctrl_c_exits_130_keeping_every_finished_image(reference, prompt_file, tmp_path, monkeypatch):
    import stepvar.pipeline

    ref, _ = reference
    out = tmp_path / "set"
    real_decode, calls = stepvar.pipeline.Pipeline.decode, []

    def decode_then_interrupt(self, latent):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C while the 4th image is being made
        return real_decode(self, latent)

    monkeypatch.setattr(stepvar.pipeline.Pipeline, "decode", decode_then_interrupt)
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--batch-size", 2, "--out", out, "--seed", 7)
    assert r.exit_code == 130 and r.stderr.strip() == "error: interrupted", (r.exit_code, r.stderr)
    made = pngs(out)
    assert len(made) == 3 and all(ref_bytes == pngs(ref)[k] for k, ref_bytes in made.items())
    assert hidden(out) == [] and json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(stepvar.pipeline.Pipeline, "decode", real_decode)
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--batch-size", 2, "--out", out, "--seed", 7, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["generated_this_run"] == 3
    assert pngs(out) == pngs(ref)


def test_offload_text_encoder_gives_the_same_images(reference, prompt_file, tmp_path):
    ref, _ = reference
    out = tmp_path / "te"
    r = run("generate", "--prompts", prompt_file, "--samples", 2, "--batch-size", 3, "--offload", "text-encoder",
            "--out", out, "--seed", 7)
    assert r.exit_code == 0, r.output
    assert pngs(out) == pngs(ref)
    assert json.loads((out / "manifest.json").read_text())["offload"] == "text-encoder"
    assert json.loads(record_path(out, 0, 0).read_text())["offload"] == "text-encoder"


@pytest.mark.parametrize("method", ["dense", "stepvar", "stepvar-plus", "fastvar-pos-skip"])
def test_offload_model_keeps_at_most_one_block_materialised_while_the_loop_runs(method):
    """What this proves on a CPU: every block's weights are real tensors only while that block runs, and
    never two at once. The streamer leaves 'meta' placeholders in a block it has released, so any use of
    a block that was not streamed in first would fail (or could not give the right image); a hook on
    every module of every block checks, at each call, that its block is the one materialised. What it
    does not prove: the bytes saved on a GPU (on a CPU the device copy is the host tensor itself)."""
    from stepvar.pipeline import load_pipeline
    from stepvar.pruning.registry import pruner_from_settings
    from stepvar.sampling import SamplingConfig

    plain, streamed = load_pipeline(), load_pipeline(offload="model")
    streamer = streamed.streamer
    seen: list[tuple[int, list[int]]] = []

    def check(j):
        def hook(module, args):
            on = streamer.on_device()
            seen.append((j, on))
            assert on == [j], f"block {j} ran while blocks {on} were materialised"
        return hook

    handles = [m.register_forward_pre_hook(check(j)) for j, blk in enumerate(streamed.model.blocks) for m in blk.modules()
               if m is not blk]
    try:
        prompts, sampling = PROMPTS[2:], SamplingConfig.for_preset(None, seed=5)
        a = plain.generate(prompts, None, pruner_from_settings(method, None, None, None, None), sampling)
        b = streamed.generate(prompts, None, pruner_from_settings(method, None, None, None, None), sampling)
    finally:
        for h in handles:
            h.remove()
    assert np.array_equal(a.images, b.images)
    assert {j for j, _ in seen} == set(range(len(streamed.model.blocks)))  # every block ran under the check
    assert streamer.on_device() == []  # released after the loop
    depth, scales_run = len(streamed.model.blocks), sum(1 for t in b.sample.timings if not t.skipped)
    assert streamer.loads == depth * (scales_run + 1)  # once per scale, plus once for the conditioning
    assert all(p.is_meta for p in streamed.model.blocks[0].parameters())
    assert not any(p.is_meta for n, p in streamed.model.named_parameters() if not n.startswith("block_chunks"))
    assert b.record["offload"] == "model" and torch.equal(a.sample.latent_BdHW, b.sample.latent_BdHW)
