"""`stepvar train` and `stepvar eval` wiring (tiny smoke runs; real training is a benchmark, not a test)."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stepvar.io import save_image
from stepvar.toy.grammar import parse
from stepvar.toy.world import render, sample_scene_for_prompt
from stepvar_cli.app import app

runner = CliRunner()


def test_eval_scores_ground_truth_images(tmp_path):
    rng = np.random.default_rng(0)
    prompts = ["a red circle", "two blue squares", "a yellow triangle above a green circle"]
    for i, p in enumerate(prompts):
        save_image(tmp_path / f"{i}.png", render(sample_scene_for_prompt(parse(p), rng)), {"prompt": p})
    r = runner.invoke(app, ["eval", "--images", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["overall"] == 1.0 and data["stray_share"] == 0.0
    assert [x["stray_objects"] for x in data["per_image"]] == [0, 0, 0]
    # the same scenes with a second red circle where the prompt asked for one: 1 image of 3 has a stray
    scene = sample_scene_for_prompt(parse("a red circle"), rng)
    twin = dataclasses.replace(scene.objects[0], cx=0.2 if scene.objects[0].cx > 0.5 else 0.8, cy=0.2, size=0.15)
    save_image(tmp_path / "0.png", render(dataclasses.replace(scene, objects=[*scene.objects, twin])),
               {"prompt": "a red circle"})
    r = runner.invoke(app, ["eval", "--images", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "stray objects: 0.333" in r.stdout


def test_eval_generates_and_labels_untrained(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    r = runner.invoke(app, ["eval", "--model", "tiny", "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["n_images"] == 1 and data["model_status"].startswith("untrained")
    assert (tmp_path / "o" / "eval.json").exists()


def test_eval_takes_a_method_file_and_records_what_it_ran(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    (tmp_path / "mine.yaml").write_text("method: stepvar\nkeep: 0.4\n")
    runs = {}
    for name, extra in [("file", ["--method-file", str(tmp_path / "mine.yaml")]),
                        ("named", ["--method", "stepvar", "--keep", "0.4"]), ("dense", [])]:
        r = runner.invoke(app, ["eval", "--model", "tiny", "--prompts", str(prompts), "--seed", "3",
                                "--out", str(tmp_path / name), "--json", *extra])
        assert r.exit_code == 0, r.output
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])
        saved = json.loads((tmp_path / name / "eval.json").read_text())
        assert saved["settings"] == runs[name]["settings"]
    same = [(tmp_path / "file" / f).read_bytes() == (tmp_path / "named" / f).read_bytes() for f in ("0000_0.png", "0001_0.png")]
    assert same == [True, True]
    assert (tmp_path / "file" / "0000_0.png").read_bytes() != (tmp_path / "dense" / "0000_0.png").read_bytes()
    file_settings, named = runs["file"]["settings"], runs["named"]["settings"]
    assert file_settings["pruning"]["method"] == "mine" and named["pruning"]["method"] == "stepvar"
    assert file_settings["pruning"]["keep"] == named["pruning"]["keep"] == 0.4
    assert runs["dense"]["settings"]["pruning"] == {"method": "dense"}
    assert named["seed"] == 3 and named["samples"] == 1 and named["schedule"]["pixel_size_hw"] == [256, 256]


def test_eval_rejects_words_outside_the_grammar(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a purple elephant\n")
    r = runner.invoke(app, ["eval", "--model", "tiny", "--prompts", str(prompts)])
    assert r.exit_code == 2 and r.output.count("\n") == 1


@pytest.mark.slow  # trains
def test_train_vae_smoke_and_resume(tmp_path):
    out = tmp_path / "vae"
    r = runner.invoke(app, ["train", "vae", "--out", str(out), "--steps", "1", "--batch", "2", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert (out / "checkpoint.pt").exists()
    again = runner.invoke(app, ["train", "vae", "--out", str(out), "--steps", "1", "--batch", "2", "--device", "cpu"])
    assert again.exit_code == 2  # an existing run is never overwritten without --resume
    resumed = runner.invoke(app, ["train", "vae", "--out", str(out), "--steps", "2", "--batch", "2", "--device", "cpu",
                                  "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
