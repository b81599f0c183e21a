"""Refactors must not change a single pixel: every method's images on the embedded model,
compared with references recorded before the change (scripts/record_regression.py)."""

import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recorder():
    return load_script("record_regression")


def test_images_bit_identical_to_recorded_references():
    expected = json.loads((ROOT / "tests" / "data" / "regression_images.json").read_text())
    got = _recorder().generate_all()
    assert set(got) == set(expected)
    changed = [f"{k}: mean {expected[k]['mean']} -> {got[k]['mean']}" for k in expected
               if got[k]["sha256"] != expected[k]["sha256"]]
    assert not changed, "images changed:\n" + "\n".join(changed)
