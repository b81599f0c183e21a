"""Bad input over every command: exit 2, exactly one line on stderr, no traceback, nothing written.

The table walks every command (generate, inspect, models, methods, overhead, bench, compare,
eval, train vae|latents|gpt|export) with bad numbers, bad names, bad files and unwritable
outputs. None of the cases runs a generation: every one must be refused before work starts.
The security cases (shard index escaping its directory, a preset name that is a path, a YAML
tag in a preset file, escape sequences and Rich markup in keys, prompts and paths, a FIFO given
as a file) are in the table too, and each also has its own test below.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stepvar_cli.app import app

ASSETS = Path(__file__).resolve().parents[1] / "stepvar" / "assets" / "toy"
BIG = str(2**64)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG header that claims 1.6 G pixels: tiny on disk, a bomb if decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _export_copy(dst: Path, skip: str | None = None, model_json: str | None = None) -> Path:
    dst.mkdir()
    for f in ASSETS.iterdir():
        if f.name != skip and not (model_json is not None and f.name == "model.json"):
            (dst / f.name).symlink_to(f)
    if model_json is not None:
        (dst / "model.json").write_text(model_json)
    return dst


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Every bad file the table needs, made once."""
    from PIL import Image, PngImagePlugin
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("fixtures")
    (d / "utf16.txt").write_bytes("a red circle\n".encode("utf-16"))
    (d / "badutf8.txt").write_bytes(b"a red circle\na gr\xe9en square\n")
    (d / "grammar.txt").write_text("a red circle\nfly me to the moon\n")
    (d / "empty.txt").write_text("# only a comment\n\n")
    (d / "empty.jsonl").write_text("\n\n")
    (d / "set.txt").write_text("a red circle\n")
    (d / "set.jsonl").write_text('{"prompt": "a red circle", "tag": "single_object"}\n')
    (d / "torn.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "two blue squares"\n')
    (d / "noprompt.jsonl").write_text('{"prompt": "a red circle"}\n{"tag": "colors"}\n')
    (d / "array.jsonl").write_text('["a red circle"]\n')
    (d / "grammar.jsonl").write_text('{"prompt": "fly me to the moon"}\n')
    (d / "other_set").mkdir()  # an output folder made from another prompt set
    (d / "other_set" / "manifest.json").write_text(json.dumps({"prompts_sha256": "0" * 64, "seed": 0, "settings": {}}))
    (d / "evil.yaml").write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "broken.yaml").write_text("method: stepvar\nkeep: [0.4\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "idw.yaml").write_text("method: stepvar\nkeep: 0.4\nrestore: idw\n")
    os.mkfifo(d / "fifo")
    torch.save({1: torch.zeros(2)}, d / "intkeys.pth")
    torch.save([torch.zeros(2)], d / "list.pth")
    (d / "garbage.pth").write_bytes(b"PK\x03\x04 this is not a zip")
    save_file({"w": torch.zeros(2)}, str(d / "outside.safetensors"))
    for name, target in (("up", "../outside.safetensors"), ("abs", str(d / "outside.safetensors")),
                         ("link", "model-1.safetensors")):
        sub = d / f"shard_{name}"
        sub.mkdir()
        (sub / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": target}}))
    (d / "shard_link" / "model-1.safetensors").symlink_to(d / "outside.safetensors")
    (d / "shard_list").mkdir()
    (d / "shard_list" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["w"]}))
    (d / "shard_notjson").mkdir()
    (d / "shard_notjson" / "model.safetensors.index.json").write_text("{weight_map:")
    (d / "empty.pth").write_bytes(b"")
    (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (d / "notindex.json").write_text('{"a": 1}')
    (d / "long.txt").write_text("a red circle " + "zzz " * 30_000 + "\n")
    # image directories for `eval --images`
    info = PngImagePlugin.PngInfo()
    info.add_text("stepvar:prompt", "a red circle")
    good = d / "good.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, pnginfo=info)
    for name in ("trunc", "notimg", "dir", "bomb", "noprompt"):
        (d / f"img_{name}").mkdir()
    (d / "img_trunc" / "a.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "img_notimg" / "a.png").write_text("not an image at all\n")
    (d / "img_dir" / "x.png").mkdir()
    (d / "img_bomb" / "a.png").write_bytes(_bomb_png())
    Image.new("RGB", (8, 8)).save(d / "img_noprompt" / "a.png")
    # export directories for `--weights` / `--vae`
    _export_copy(d / "export_no_te", skip="text_encoder.safetensors")
    _export_copy(d / "export_notjson", model_json="{not json")
    _export_copy(d / "export_noarch", model_json=json.dumps({"vae": {}}))
    _export_copy(d / "export_list", model_json="[1, 2]")
    _export_copy(d / "export_badarch", model_json=json.dumps({"arch": {"depth": "x"}}))
    return d


# (id, argv). {fx}: the fixtures above; {out}: the test's empty working directory, which must stay
# empty apart from the file `afile` (a file where a directory is needed).
CASES: list[tuple[str, list[str]]] = [
    # ---- usage errors (Click): one line, not a box
    ("unknown-command", ["frobnicate"]),
    ("unknown-option", ["generate", "-p", "a red circle", "--frobnicate"]),
    ("missing-prompt", ["generate"]),
    ("int-not-int", ["generate", "-p", "a red circle", "--resolution", "big"]),
    ("seed-float", ["generate", "-p", "a red circle", "--seed", "1e30"]),
    ("train-unknown-sub", ["train", "frobnicate"]),
    ("models-extra-arg", ["models", "extra"]),
    ("methods-bad-option", ["methods", "--all"]),
    # ---- generate: numbers
    ("gen-seed-2^64", ["generate", "-p", "a red circle", "--seed", BIG]),
    ("gen-seed-negative", ["generate", "-p", "a red circle", "--seed", "-1"]),
    ("gen-cfg-nan", ["generate", "-p", "a red circle", "--cfg", "nan"]),
    ("gen-cfg-inf", ["generate", "-p", "a red circle", "--cfg", "inf"]),
    ("gen-cfg-list-nan", ["generate", "-p", "a red circle", "--cfg", "3,nan,3"]),
    ("gen-cfg-negative", ["generate", "-p", "a red circle", "--cfg", "-2"]),
    ("gen-tau-nan", ["generate", "-p", "a red circle", "--tau", "nan"]),
    ("gen-tau-zero", ["generate", "-p", "a red circle", "--tau", "0"]),
    ("gen-top-p-nan", ["generate", "-p", "a red circle", "--top-p", "nan"]),
    ("gen-top-p-2", ["generate", "-p", "a red circle", "--top-p", "2"]),
    ("gen-keep-nan", ["generate", "-p", "a red circle", "--method", "stepvar", "--keep", "nan"]),
    ("gen-keep-0", ["generate", "-p", "a red circle", "--method", "stepvar", "--keep", "0"]),
    ("gen-keep-table-nan", ["generate", "-p", "a red circle", "--method", "stepvar", "--keep-per-scale", "5:nan"]),
    ("gen-keep-table-junk", ["generate", "-p", "a red circle", "--method", "stepvar", "--keep-per-scale", "5=0.4"]),
    ("gen-first-scale-neg", ["generate", "-p", "a red circle", "--method", "stepvar", "--first-scale", "-1"]),
    ("gen-first-scale-big", ["generate", "-p", "a red circle", "--method", "stepvar", "--first-scale", "99"]),
    ("gen-skip-last-all", ["generate", "-p", "a red circle", "--skip-last", "7"]),
    ("gen-skip-last-neg", ["generate", "-p", "a red circle", "--method", "stepvar", "--skip-last", "-1"]),
    ("gen-cfg-drop-past", ["generate", "-p", "a red circle", "--cfg-drop-from", "7"]),
    ("gen-cfg-drop-after-skip", ["generate", "-p", "a red circle", "--cfg-drop-from", "6", "--skip-last", "1"]),
    ("gen-resolution-300", ["generate", "-p", "a red circle", "--resolution", "300"]),
    ("gen-aspect-junk", ["generate", "-p", "a red circle", "--aspect", "banana"]),
    ("gen-aspect-zero", ["generate", "-p", "a red circle", "--aspect", "0:1"]),
    ("gen-aspect-nan", ["generate", "-p", "a red circle", "--aspect", "nan"]),
    ("gen-size-junk", ["generate", "-p", "a red circle", "--size", "12by7"]),
    ("gen-size-zero", ["generate", "-p", "a red circle", "--size", "0x0"]),
    ("gen-device", ["generate", "-p", "a red circle", "--device", "tpu"]),
    ("gen-dtype", ["generate", "-p", "a red circle", "--dtype", "fp8"]),
    # ---- generate: text
    ("gen-prompt-empty", ["generate", "-p", "  "]),
    ("gen-prompt-not-utf8", ["generate", "-p", "a red \udcff circle"]),
    ("gen-prompt-100kb", ["generate", "-p", "zzz " * 25_000]),
    ("gen-prompt-markup", ["generate", "-p", "a [/x] circle [bold]"]),
    ("gen-prompt-escape", ["generate", "-p", "a \x1b[31mred\x1b[0m circle"]),
    ("gen-prompt-grammar", ["generate", "-p", "fly me to the moon"]),
    # ---- generate: names and files
    ("gen-model-path", ["generate", "-p", "a red circle", "--model", "../../etc/passwd"]),
    ("gen-model-unknown", ["generate", "-p", "a red circle", "--model", "no-such-model"]),
    ("gen-method-path", ["generate", "-p", "a red circle", "--method", "../methods/stepvar"]),
    ("gen-method-unknown", ["generate", "-p", "a red circle", "--method", "bogus"]),
    ("gen-method-file-tag", ["generate", "-p", "a red circle", "--method-file", "{fx}/evil.yaml"]),
    ("gen-method-file-broken", ["generate", "-p", "a red circle", "--method-file", "{fx}/broken.yaml"]),
    ("gen-method-file-list", ["generate", "-p", "a red circle", "--method-file", "{fx}/list.yaml"]),
    ("gen-method-file-fifo", ["generate", "-p", "a red circle", "--method-file", "{fx}/fifo"]),
    ("gen-model-file-tag", ["generate", "-p", "a red circle", "--model-file", "{fx}/evil.yaml"]),
    ("gen-weights-missing", ["generate", "-p", "a red circle", "--weights", "{fx}/nope"]),
    ("gen-weights-no-te", ["generate", "-p", "a red circle", "--weights", "{fx}/export_no_te"]),
    ("gen-weights-notjson", ["generate", "-p", "a red circle", "--weights", "{fx}/export_notjson"]),
    ("gen-weights-noarch", ["generate", "-p", "a red circle", "--weights", "{fx}/export_noarch"]),
    ("gen-weights-list", ["generate", "-p", "a red circle", "--weights", "{fx}/export_list"]),
    ("gen-weights-badarch", ["generate", "-p", "a red circle", "--weights", "{fx}/export_badarch"]),
    ("gen-weights-fifo", ["generate", "-p", "a red circle", "--weights", "{fx}/fifo"]),
    ("gen-tiny-weights-intkeys", ["generate", "-p", "x", "-m", "tiny", "--weights", "{fx}/intkeys.pth", "--vae", "{fx}/intkeys.pth"]),
    ("gen-tiny-weights-garbage", ["generate", "-p", "x", "-m", "tiny", "--weights", "{fx}/garbage.pth", "--vae", "{fx}/garbage.pth"]),
    # ---- generate: outputs
    ("gen-out-proc", ["generate", "-p", "a red circle", "--out", "/proc/x.png"]),
    ("gen-out-suffix", ["generate", "-p", "a red circle", "--out", "{out}/x.gif"]),
    ("gen-out-missing-dir", ["generate", "-p", "a red circle", "--out", "{out}/no/x.png"]),
    ("gen-out-under-file", ["generate", "-p", "a red circle", "--out", "{out}/afile/x.png"]),
    ("gen-out-markup-path", ["generate", "-p", "a red circle", "--out", "{out}/[/x]/x.png"]),
    # ---- generate: prompt sets
    ("set-empty-txt", ["generate", "--prompts", "{fx}/empty.txt", "--out", "{out}/set"]),
    ("set-empty-jsonl", ["generate", "--prompts", "{fx}/empty.jsonl", "--out", "{out}/set"]),
    ("set-jsonl-torn-line", ["generate", "--prompts", "{fx}/torn.jsonl", "--out", "{out}/set"]),
    ("set-jsonl-no-prompt", ["generate", "--prompts", "{fx}/noprompt.jsonl", "--out", "{out}/set"]),
    ("set-jsonl-array", ["generate", "--prompts", "{fx}/array.jsonl", "--out", "{out}/set"]),
    ("set-jsonl-grammar", ["generate", "--prompts", "{fx}/grammar.jsonl", "--out", "{out}/set"]),
    ("set-missing-file", ["generate", "--prompts", "{fx}/nope.txt", "--out", "{out}/set"]),
    ("set-fifo", ["generate", "--prompts", "{fx}/fifo", "--out", "{out}/set"]),
    ("set-utf16", ["generate", "--prompts", "{fx}/utf16.txt", "--out", "{out}/set"]),
    ("set-samples-0", ["generate", "--prompts", "{fx}/set.txt", "--samples", "0", "--out", "{out}/set"]),
    ("set-batch-size-0", ["generate", "--prompts", "{fx}/set.txt", "--batch-size", "0", "--out", "{out}/set"]),
    ("set-and-prompt", ["generate", "--prompts", "{fx}/set.txt", "--prompt", "a red circle", "--out", "{out}/set"]),
    ("set-no-out", ["generate", "--prompts", "{fx}/set.txt"]),
    ("set-out-is-file", ["generate", "--prompts", "{fx}/set.jsonl", "--out", "{out}/afile"]),
    ("set-other-settings", ["generate", "--prompts", "{fx}/set.txt", "--out", "{fx}/other_set"]),
    ("set-samples-without-set", ["generate", "-p", "a red circle", "--samples", "2"]),
    ("set-offload-bogus", ["generate", "--prompts", "{fx}/set.txt", "--offload", "gpu", "--out", "{out}/set"]),
    ("gen-offload-bogus", ["generate", "-p", "a red circle", "--offload", "disk"]),
    ("set-video-model", ["generate", "--prompts", "{fx}/set.txt", "-m", "infinitystar-tiny", "--out", "{out}/set"]),
    # ---- inspect
    ("inspect-missing", ["inspect", "{fx}/nope.pth"]),
    ("inspect-fifo", ["inspect", "{fx}/fifo"]),
    ("inspect-dev-zero", ["inspect", "/dev/zero"]),
    ("inspect-dir-no-index", ["inspect", "{fx}/img_dir"]),
    ("inspect-intkeys", ["inspect", "{fx}/intkeys.pth"]),
    ("inspect-list-pth", ["inspect", "{fx}/list.pth"]),
    ("inspect-garbage", ["inspect", "{fx}/garbage.pth"]),
    ("inspect-text-file", ["inspect", "{fx}/grammar.txt"]),
    ("inspect-shard-dotdot", ["inspect", "{fx}/shard_up"]),
    ("inspect-shard-absolute", ["inspect", "{fx}/shard_abs"]),
    ("inspect-shard-weightmap-list", ["inspect", "{fx}/shard_list"]),
    ("inspect-shard-notjson", ["inspect", "{fx}/shard_notjson"]),
    ("inspect-model-path", ["inspect", "{fx}/outside.safetensors", "--model", "../x"]),
    ("inspect-model-unknown", ["inspect", "{fx}/outside.safetensors", "--model", "nope"]),
    # ---- overhead
    ("overhead-repeats-0", ["overhead", "--repeats", "0"]),
    ("overhead-keep-nan", ["overhead", "--keep", "nan"]),
    ("overhead-keep-2", ["overhead", "--keep", "2"]),
    ("overhead-resolution", ["overhead", "--resolution", "300"]),
    ("overhead-model-path", ["overhead", "--model", "../x"]),
    ("overhead-device", ["overhead", "--device", "tpu"]),
    # ---- bench
    ("bench-variant-value", ["bench", "--methods", "dense,stepvar:norm=zzz", "--out", "{out}/b"]),
    ("bench-variant-key", ["bench", "--methods", "stepvar:bogus=1", "--out", "{out}/b"]),
    ("bench-variant-yaml", ["bench", "--methods", "stepvar:keep=[", "--out", "{out}/b"]),
    ("bench-variant-tag", ["bench", "--methods", "stepvar:keep=!!python/object/apply:os.system [x]", "--out", "{out}/b"]),
    ("bench-variant-keep-nan", ["bench", "--methods", "stepvar@nan", "--out", "{out}/b"]),
    ("bench-method-path", ["bench", "--methods", "../x", "--out", "{out}/b"]),
    ("bench-keep-nan", ["bench", "--keep", "nan", "--out", "{out}/b"]),
    ("bench-keep-junk", ["bench", "--keep", "0.4,x", "--out", "{out}/b"]),
    ("bench-repeats-0", ["bench", "--repeats", "0", "--out", "{out}/b"]),
    ("bench-warmup-neg", ["bench", "--warmup", "-1", "--out", "{out}/b"]),
    ("bench-batch-0", ["bench", "--batch", "0", "--out", "{out}/b"]),
    ("bench-resolution", ["bench", "--resolution", "256,300", "--out", "{out}/b"]),
    ("bench-seed-2^64", ["bench", "--seed", BIG, "--out", "{out}/b"]),
    ("bench-cfg-nan", ["bench", "--cfg", "nan", "--out", "{out}/b"]),
    ("bench-out-file", ["bench", "--out", "{out}/afile"]),
    ("bench-prompt-grammar", ["bench", "--prompt", "fly me to the moon", "--out", "{out}/b"]),
    ("bench-flops-batch-0", ["bench", "--flops-only", "--batch", "0", "--out", "{out}/b"]),
    ("bench-flops-variant", ["bench", "--flops-only", "--methods", "stepvar:norm=zzz", "--out", "{out}/b"]),
    # ---- compare
    ("compare-prompts-utf16", ["compare", "--prompts", "{fx}/utf16.txt", "--out", "{out}/c"]),
    ("compare-prompts-bad-utf8", ["compare", "--prompts", "{fx}/badutf8.txt", "--out", "{out}/c"]),
    ("compare-prompts-grammar", ["compare", "--prompts", "{fx}/grammar.txt", "--out", "{out}/c"]),
    ("compare-prompts-empty", ["compare", "--prompts", "{fx}/empty.txt", "--out", "{out}/c"]),
    ("compare-prompts-fifo", ["compare", "--prompts", "{fx}/fifo", "--out", "{out}/c"]),
    ("compare-prompts-dir", ["compare", "--prompts", "{fx}", "--out", "{out}/c"]),
    ("compare-prompts-missing", ["compare", "--prompts", "{fx}/nope.txt", "--out", "{out}/c"]),
    ("compare-both-prompts", ["compare", "-p", "a red circle", "--prompts", "{fx}/grammar.txt", "--out", "{out}/c"]),
    ("compare-variant-value", ["compare", "-p", "a red circle", "--methods", "dense,stepvar:norm=zzz", "--out", "{out}/c"]),
    ("compare-warmup-neg", ["compare", "-p", "a red circle", "--warmup", "-1", "--out", "{out}/c"]),
    ("compare-out-file", ["compare", "-p", "a red circle", "--out", "{out}/afile"]),
    ("compare-tau-nan", ["compare", "-p", "a red circle", "--tau", "nan", "--out", "{out}/c"]),
    ("compare-resolution", ["compare", "-p", "a red circle", "--resolution", "300", "--out", "{out}/c"]),
    # ---- eval
    ("eval-images-truncated", ["eval", "--images", "{fx}/img_trunc"]),
    ("eval-images-not-image", ["eval", "--images", "{fx}/img_notimg"]),
    ("eval-images-dir-named-png", ["eval", "--images", "{fx}/img_dir"]),
    ("eval-images-bomb", ["eval", "--images", "{fx}/img_bomb"]),
    ("eval-images-no-prompt", ["eval", "--images", "{fx}/img_noprompt"]),
    ("eval-images-missing", ["eval", "--images", "{fx}/nope"]),
    ("eval-images-file", ["eval", "--images", "{fx}/good.png"]),
    ("eval-prompts-utf16", ["eval", "--prompts", "{fx}/utf16.txt"]),
    ("eval-prompts-bad-utf8", ["eval", "--prompts", "{fx}/badutf8.txt"]),
    ("eval-prompts-grammar", ["eval", "--prompts", "{fx}/grammar.txt"]),
    ("eval-prompts-fifo", ["eval", "--prompts", "{fx}/fifo"]),
    ("eval-samples-0", ["eval", "--samples", "0"]),
    ("eval-keep-nan", ["eval", "--method", "stepvar", "--keep", "nan"]),
    ("eval-cfg-inf", ["eval", "--cfg", "inf"]),
    ("eval-seed-2^64", ["eval", "--seed", BIG]),
    ("eval-weights-no-te", ["eval", "--weights", "{fx}/export_no_te"]),
    ("eval-out-file", ["eval", "--out", "{out}/afile"]),
    ("eval-model-path", ["eval", "--model", "a/b"]),
    ("eval-method-file-tag", ["eval", "--method-file", "{fx}/evil.yaml"]),
    # ---- train vae
    ("vae-batch-0", ["train", "vae", "--out", "{out}/r", "--batch", "0"]),
    ("vae-ckpt-every-0", ["train", "vae", "--out", "{out}/r", "--ckpt-every", "0"]),
    ("vae-lr-nan", ["train", "vae", "--out", "{out}/r", "--lr", "nan"]),
    ("vae-lr-neg", ["train", "vae", "--out", "{out}/r", "--lr", "-1"]),
    ("vae-object-weight-nan", ["train", "vae", "--out", "{out}/r", "--object-weight", "nan"]),
    ("vae-steps-0", ["train", "vae", "--out", "{out}/r", "--steps", "0"]),
    ("vae-seed-2^64", ["train", "vae", "--out", "{out}/r", "--seed", BIG]),
    ("vae-warmup-neg", ["train", "vae", "--out", "{out}/r", "--warmup", "-1"]),
    ("vae-decay-0", ["train", "vae", "--out", "{out}/r", "--decay-steps", "0"]),
    ("vae-out-file", ["train", "vae", "--out", "{out}/afile"]),
    ("vae-init-missing", ["train", "vae", "--out", "{out}/r", "--init-from", "{fx}/nope"]),
    ("vae-device", ["train", "vae", "--out", "{out}/r", "--device", "tpu"]),
    # ---- train gpt
    ("gpt-vae-missing", ["train", "gpt", "--out", "{out}/r", "--vae", "{fx}/nope"]),
    ("gpt-vae-no-te", ["train", "gpt", "--out", "{out}/r", "--vae", "{fx}/export_notjson"]),
    ("gpt-vae-fifo", ["train", "gpt", "--out", "{out}/r", "--vae", "{fx}/fifo"]),
    ("gpt-self-correction-nan", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--self-correction", "nan"]),
    ("gpt-batch-0", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--batch", "0"]),
    ("gpt-prefix-batch-neg", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--prefix-batch", "-1"]),
    ("gpt-form-weights-nan", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--form-weights", "nan,1,1"]),
    ("gpt-form-weights-junk", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--form-weights", "a,b"]),
    ("gpt-layout", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--layout", "zzz"]),
    ("gpt-loss-weighting", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--loss-weighting", "zzz"]),
    ("gpt-latents-fifo", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--latents", "{fx}/fifo"]),
    ("gpt-out-file", ["train", "gpt", "--out", "{out}/afile", "--vae", str(ASSETS)]),
    ("gpt-lr-inf", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--lr", "inf"]),
    # ---- train latents
    ("latents-n-0", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", str(ASSETS), "--n", "0"]),
    ("latents-size", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", str(ASSETS), "--size", "100"]),
    ("latents-layout", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", str(ASSETS), "--layout", "zzz"]),
    ("latents-out-proc", ["train", "latents", "--out", "/proc/p.safetensors", "--vae", str(ASSETS), "--n", "1"]),
    ("latents-out-missing-dir", ["train", "latents", "--out", "{out}/no/p.safetensors", "--vae", str(ASSETS), "--n", "1"]),
    ("latents-vae-missing", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", "{fx}/nope"]),
    ("latents-seed-2^64", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", str(ASSETS), "--seed", BIG]),
    # ---- train export
    ("export-missing", ["train", "export", "{fx}/nope", "--out", "{out}/e"]),
    ("export-intkeys", ["train", "export", "{fx}/intkeys.pth", "--out", "{out}/e"]),
    ("export-garbage", ["train", "export", "{fx}/garbage.pth", "--out", "{out}/e"]),
    ("export-fifo", ["train", "export", "{fx}/fifo", "--out", "{out}/e"]),
    ("export-out-file", ["train", "export", "{fx}/intkeys.pth", "--out", "{out}/afile"]),
    # ---- more of the same, found by trying every command with bad values
    ("gen-keep-and-table", ["generate", "-p", "a red circle", "--method", "stepvar", "--keep", "0.4", "--keep-per-scale", "5:0.4"]),
    ("gen-vae-without-weights", ["generate", "-p", "a red circle", "--vae", str(ASSETS)]),
    ("gen-text-encoder-on-toy", ["generate", "-p", "a red circle", "--text-encoder", str(ASSETS)]),
    ("gen-cfg-count", ["generate", "-p", "a red circle", "--cfg", "1,2"]),
    ("gen-cfg-empty", ["generate", "-p", "a red circle", "--cfg", ",,,"]),
    ("gen-size-negative", ["generate", "-p", "a red circle", "--size", "-5x10"]),
    ("gen-aspect-inf", ["generate", "-p", "a red circle", "--aspect", "inf"]),
    ("gen-resolution-negative", ["generate", "-p", "a red circle", "--resolution", "-1"]),
    ("gen-out-empty", ["generate", "-p", "a red circle", "--out", ""]),
    ("gen-out-is-dir", ["generate", "-p", "a red circle", "--out", "{out}"]),
    ("gen-seed-empty", ["generate", "-p", "a red circle", "--seed", ""]),
    ("gen-tiny-weights-text", ["generate", "-p", "x", "-m", "tiny", "--weights", "{fx}/grammar.txt", "--vae", "{fx}/grammar.txt"]),
    ("gen-tiny-weights-empty", ["generate", "-p", "x", "-m", "tiny", "--weights", "{fx}/empty.pth", "--vae", "{fx}/empty.pth"]),
    ("gen-125m-bad-safetensors", ["generate", "-p", "x", "-m", "infinity-125m", "--weights", "{fx}/bad.safetensors", "--vae", "{fx}/bad.safetensors"]),
    ("gen-125m-text-encoder-missing", ["generate", "-p", "x", "-m", "infinity-125m", "--text-encoder", "{fx}/nope"]),
    ("inspect-empty", ["inspect", "{fx}/empty.pth"]),
    ("inspect-bad-safetensors", ["inspect", "{fx}/bad.safetensors"]),
    ("inspect-json-not-index", ["inspect", "{fx}/notindex.json"]),
    ("overhead-keep-0", ["overhead", "--keep", "0"]),
    ("overhead-repeats-neg", ["overhead", "--repeats", "-1"]),
    ("bench-methods-empty", ["bench", "--methods", "", "--out", "{out}/b"]),
    ("bench-methods-commas", ["bench", "--methods", ",,,", "--out", "{out}/b"]),
    ("bench-dense-at-keep", ["bench", "--methods", "dense@0.4", "--out", "{out}/b"]),
    ("bench-at-junk", ["bench", "--methods", "fastvar@abc", "--out", "{out}/b"]),
    ("bench-variant-no-key", ["bench", "--methods", "stepvar:=1", "--out", "{out}/b"]),
    ("bench-variant-nested-scales", ["bench", "--methods", "stepvar:scales=[1,[2]]", "--out", "{out}/b"]),
    ("bench-variant-keep-mapping", ["bench", "--methods", "stepvar:keep={a: 1}", "--out", "{out}/b"]),
    ("bench-skip-last-all", ["bench", "--skip-last", "7", "--out", "{out}/b"]),
    ("bench-variant-cfg-drop-past", ["bench", "--methods", "fastvar-skip:cfg_drop_from=99", "--out", "{out}/b"]),
    ("bench-flops-skip-last-all", ["bench", "--flops-only", "-m", "infinity-2b", "-r", "1024", "--skip-last", "13"]),
    ("bench-resolution-empty", ["bench", "--resolution", "", "--out", "{out}/b"]),
    ("bench-aspect-junk", ["bench", "--aspect", "junk", "--out", "{out}/b"]),
    ("bench-prompt-empty", ["bench", "--prompt", "", "--out", "{out}/b"]),
    ("bench-top-p-0", ["bench", "--top-p", "0", "--out", "{out}/b"]),
    ("bench-flops-aspect", ["bench", "--flops-only", "--aspect", "junk", "--out", "{out}/b"]),
    ("bench-no-decode-flops-only", ["bench", "--flops-only", "--no-decode", "--out", "{out}/b"]),
    ("bench-no-decode-video", ["bench", "-m", "infinitystar-tiny", "--no-decode", "--out", "{out}/b"]),
    ("merge-latents-missing-pool", ["train", "merge-latents", "{out}/nope.safetensors", "--out", "{out}/m.safetensors"]),
    ("bench-flops-model-path", ["bench", "--flops-only", "-m", "../x", "--out", "{out}/b"]),
    ("compare-size-junk", ["compare", "-p", "a red circle", "--size", "junk", "--out", "{out}/c"]),
    ("compare-keep-0", ["compare", "-p", "a red circle", "--keep", "0", "--out", "{out}/c"]),
    ("compare-cfg-drop-past", ["compare", "-p", "a red circle", "--cfg-drop-from", "99", "--out", "{out}/c"]),
    ("compare-skip-last-all", ["compare", "-p", "a red circle", "--methods", "stepvar:skip_last=7", "--out", "{out}/c"]),
    ("compare-no-prompt", ["compare", "--out", "{out}/c"]),
    ("compare-prompts-100kb-line", ["compare", "--prompts", "{fx}/long.txt", "--out", "{out}/c"]),
    ("compare-cfg-count", ["compare", "-p", "a red circle", "--cfg", "1,2", "--out", "{out}/c"]),
    ("eval-method-unknown", ["eval", "--method", "bogus"]),
    ("eval-keep-2", ["eval", "--method", "stepvar", "--keep", "2"]),
    ("eval-tau-0", ["eval", "--tau", "0"]),
    ("eval-skip-last-all", ["eval", "--skip-last", "7", "--out", "{out}/e"]),
    ("eval-cfg-count", ["eval", "--cfg", "1,2"]),
    ("vae-init-text-file", ["train", "vae", "--out", "{out}/r", "--init-from", "{fx}/grammar.txt"]),
    ("vae-decoder-only-alone", ["train", "vae", "--out", "{out}/r", "--decoder-only"]),
    ("gpt-init-missing", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--init-from", "{fx}/nope"]),
    ("gpt-latents-missing", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--latents", "{fx}/nope"]),
    ("gpt-latents-bad", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--latents", "{fx}/bad.safetensors"]),
    ("gpt-prefix-scales-0", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--prefix-scales", "0"]),
    ("gpt-form-weights-count", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--form-weights", "1,1"]),
    ("gpt-form-weights-negative", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--form-weights", "-1,1,1"]),
    ("gpt-form-weights-zero", ["train", "gpt", "--out", "{out}/r", "--vae", str(ASSETS), "--form-weights", "0,0,0"]),
    ("gpt-vae-text-file", ["train", "gpt", "--out", "{out}/r", "--vae", "{fx}/grammar.txt"]),
    ("latents-vae-text-file", ["train", "latents", "--out", "{out}/p.safetensors", "--vae", "{fx}/grammar.txt"]),
    ("export-text-file", ["train", "export", "{fx}/grammar.txt", "--out", "{out}/e"]),
    ("export-empty", ["train", "export", "{fx}/empty.pth", "--out", "{out}/e"]),
    ("export-vae-missing", ["train", "export", "{fx}/nope", "--out", "{out}/e", "--vae", "{fx}/nope"]),
    # ---- video: checked before the model loads
    ("video-frames-18", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "18", "--out", "{out}/c.mp4"]),
    ("video-duration-7", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--duration", "7", "--out", "{out}/c.mp4"]),
    ("video-17-frames-to-png", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "17", "--out", "{out}/c.png"]),
    ("video-image-model-frames", ["generate", "-p", "a red circle", "-m", "tiny", "--frames", "17", "--out", "{out}/c.png"]),
    ("video-first-scale-99", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "17", "--first-scale", "99",
                              "--out", "{out}/c.mp4"]),
    ("video-restore-idw", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "17", "--method-file",
                           "{fx}/idw.yaml", "--out", "{out}/c.mp4"]),
    ("video-skip-last", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "17", "--skip-last", "1",
                         "--out", "{out}/c.mp4"]),
    ("video-cfg-drop-variant", ["generate", "-p", "a red car", "-m", "infinitystar-tiny", "--frames", "17", "--method",
                                "stepvar:cfg_drop_from=-2", "--out", "{out}/c.mp4"]),
]

runner = CliRunner()


@pytest.fixture
def no_hang():
    """A FIFO opened for reading blocks forever: fail the test instead."""
    def on_alarm(signum, frame):
        raise TimeoutError("the command blocked (opened a FIFO?)")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def no_work(monkeypatch):
    """Bad input is refused before any generation, training, encoding or timing starts."""
    import importlib

    import stepvar.pipeline

    def started(*args, **kwargs):
        raise AssertionError("work started before the bad input was refused")
    monkeypatch.setattr(stepvar.pipeline.Pipeline, "generate", started)
    monkeypatch.setattr(importlib.import_module("stepvar.video_pipeline").VideoPipeline, "generate", started)
    for module, name in (("stepvar.training.train_vae", "run_job"), ("stepvar.training.train_gpt", "run_job"),
                         ("stepvar.training.latent_pool", "build_latent_pool"),
                         ("stepvar.eval.overhead", "measure_selection_overhead")):
        monkeypatch.setattr(importlib.import_module(module), name, started)


def invoke(argv: list[str], fx: Path, out: Path):
    args = [a.replace("{fx}", str(fx)).replace("{out}", str(out)) for a in argv]
    return runner.invoke(app, args, env={"STEPVAR_MODEL": None, "STEPVAR_DEVICE": "cpu"})


@pytest.mark.parametrize("case_id, argv", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table_264_cases(case_id, argv, fx, tmp_path, monkeypatch, no_hang, no_work):
    """264 bad inputs over every command: exit 2, one line on stderr, no traceback, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("a file where a directory is expected\n")
    monkeypatch.chdir(work)
    before = sorted(p.name for p in work.rglob("*"))
    r = invoke(argv, fx, work)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.stdout)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and "weights_only" not in r.stderr
    assert len(lines[0]) <= 1000, len(lines[0])
    assert "\x1b" not in r.stderr
    assert sorted(p.name for p in work.rglob("*")) == before


def test_case_count_in_the_name_is_true():
    assert len(CASES) == 264 and len({c[0] for c in CASES}) == len(CASES)


# ---- security: each refused with one line, quickly ------------------------------------------------

def _one_line_error(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["up", "abs"])
def test_shard_index_pointing_outside_its_directory_is_refused(fx, kind, no_hang):
    import time

    from stepvar.errors import CheckpointError
    from stepvar.loading.containers import read_checkpoint

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="outside the checkpoint directory|not a file inside"):
        read_checkpoint(fx / f"shard_{kind}")
    line = _one_line_error(invoke(["inspect", f"{{fx}}/shard_{kind}"], fx, fx))
    assert "refused" in line and time.perf_counter() - t0 < 10


def test_a_shard_that_is_a_symlink_elsewhere_loads(fx):
    """The index names a file inside its directory; that the file links elsewhere (as every file of a
    Hugging Face cache does) is the user's layout, not the index's reach."""
    from stepvar.loading.containers import read_checkpoint

    assert (fx / "shard_link" / "model-1.safetensors").is_symlink()
    assert torch.equal(read_checkpoint(fx / "shard_link").tensors["w"], torch.zeros(2))


def test_shard_index_inside_its_directory_still_loads(tmp_path):
    from stepvar.loading.containers import read_checkpoint, save_checkpoint

    index = save_checkpoint({"a": torch.ones(3), "b": torch.zeros(2)}, tmp_path / "ok", "safetensors-sharded", n_shards=2)
    assert set(read_checkpoint(index.parent).tensors) == {"a", "b"}


@pytest.mark.parametrize("argv", [
    ["generate", "-p", "a red circle", "--model", "../../../tmp/evil"],
    ["generate", "-p", "a red circle", "--model", "/etc/passwd"],
    ["generate", "-p", "a red circle", "--method", "../../x"],
    ["compare", "-p", "a red circle", "--methods", "dense,sub/dir", "--out", "{out}/c"],
    ["inspect", "{fx}/intkeys.pth", "--model", "..\\x"],
])
def test_a_preset_name_with_a_path_in_it_is_refused(fx, tmp_path, argv):
    assert "is not a name" in _one_line_error(invoke(argv, fx, tmp_path))
    assert not (tmp_path / "c").exists()


def test_a_preset_file_is_read_safely(fx, tmp_path):
    line = _one_line_error(invoke(["generate", "-p", "a red circle", "--method-file", "{fx}/evil.yaml",
                                   "--out", "{out}/o.png"], fx, tmp_path))
    assert "YAML tag refused" in line and "evil.yaml" in line
    good = tmp_path / "mine.yaml"
    good.write_text("method: stepvar\nkeep: 0.5\nnorm: rank\n")
    r = invoke(["generate", "-p", "x", "-m", "tiny", "--method-file", str(good), "--out", "{out}/o.png", "--json"],
               fx, tmp_path)
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout.splitlines()[-1])
    assert record["pruning"]["keep"] == 0.5


def test_escape_sequences_and_markup_in_keys_are_printed_escaped(tmp_path):
    from stepvar.loading.checkpoints import save_checkpoint

    from stepvar.models.config import load_model_preset
    from stepvar.models.infinity import Infinity

    path = tmp_path / "keys.safetensors"
    sd = Infinity(load_model_preset("tiny").arch).state_dict()
    save_checkpoint({**sd, "\x1b[2J\x1b[31mevil[/x][bold]": torch.zeros(2)}, path, "safetensors")
    for args in (["inspect", str(path)], ["inspect", str(path), "--model", "tiny"], ["inspect", str(path), "--json"]):
        r = runner.invoke(app, args)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert r.exit_code in (0, 3) and "\x1b" not in r.output
    assert "\\x1b[2J\\x1b[31mevil[/x][bold]" in runner.invoke(app, ["inspect", str(path), "--model", "tiny"]).stdout


@pytest.mark.parametrize("argv", [
    ["generate", "-p", "a [/x] red circle", "--out", "{out}/o.png"],
    ["generate", "-p", "a \x1b]0;title\x07red [/x] circle", "--out", "{out}/o.png"],
    ["generate", "-p", "a red circle", "--out", "{out}/[/x]\x1b[31m/o.png"],
    ["compare", "--prompts", "{out}/[/x].txt", "--out", "{out}/c"],
    ["eval", "--images", "{out}/[/x]"],
])
def test_markup_and_escape_sequences_in_prompts_and_paths_are_one_escaped_line(fx, tmp_path, argv):
    line = _one_line_error(invoke(argv, fx, tmp_path))
    assert "\x1b" not in line and "\x07" not in line
    assert "[/x]" in line


def test_a_fifo_given_as_a_checkpoint_is_refused_without_opening_it(fx, no_hang):
    import time

    t0 = time.perf_counter()
    for argv in (["inspect", "{fx}/fifo"], ["generate", "-p", "x", "-m", "tiny", "--weights", "{fx}/fifo",
                                             "--vae", "{fx}/fifo"]):
        assert "FIFO" in _one_line_error(invoke(argv, fx, fx))
    assert time.perf_counter() - t0 < 10


def test_long_prompts_are_cut_in_error_lines(fx, tmp_path):
    line = _one_line_error(invoke(["generate", "-p", "zzz " * 25_000, "--out", "{out}/o.png"], fx, tmp_path))
    assert len(line) < 1000 and "characters" in line


def test_checkpoint_errors_never_suggest_loading_without_weights_only(tmp_path):
    import argparse
    import os

    # Pickled objects that weights_only refuses (torch's message then suggests weights_only=False,
    # which stepvar must never pass on): a pickled function reference and a training-args object.
    evil = tmp_path / "evil.pth"
    torch.save({"model": os.system, "args": argparse.Namespace(lr=1)}, evil)
    for argv in (["inspect", str(evil)], ["train", "export", str(evil), "--out", str(tmp_path / "e")]):
        line = _one_line_error(runner.invoke(app, argv))
        assert "weights_only" not in line and "weights only" not in line.lower(), line


def test_keep_listed_twice_is_measured_once(tmp_path):
    r = runner.invoke(app, ["bench", "--flops-only", "--model", "tiny", "--methods", "stepvar", "--keep", "0.4,0.4",
                            "--json"])
    assert r.exit_code == 0, r.stderr
    labels = [row["label"] for row in json.loads(r.stdout)["results"]]
    assert labels.count("stepvar@0.4") == 1 and "measured once" in r.stderr


def test_a_full_disk_while_writing_the_image_is_one_line_and_leaves_nothing(tmp_path):
    """`ulimit -f`: the write fails with EFBIG (Python ignores SIGXFSZ); no half-written file stays."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "stepvar_cli.app", "generate", "-m", "tiny", "--device", "cpu",
                        "-p", "x", "--out", str(out / "o.png")], capture_output=True, text=True, timeout=300,
                       preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("note: model tiny is untrained")]
    assert len(errors) == 1 and "o.png" in errors[0] and "File too large" in errors[0], r.stderr
    assert list(out.iterdir()) == []
