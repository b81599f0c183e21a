"""Parity with the official HART code on random weights (scripts/hart_parity.py).

Skipped unless the official repository has been exported to a scratch folder outside the
project and named by STEPVAR_OFFICIAL_CODE (its hart/ folder). Runs in a subprocess because the script
stands in modules (transformers, hart_backend) that must not leak into this test session.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import official_copy

OFFICIAL = official_copy("hart")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "hart_parity.py"

pytestmark = pytest.mark.skipif(OFFICIAL is None or not (OFFICIAL / "hart" / "modules").is_dir(),
                                reason="STEPVAR_OFFICIAL_CODE names no export of the official HART code")


def test_parity_with_official_hart():
    out = subprocess.run([sys.executable, str(SCRIPT), "--official", str(OFFICIAL), "--case", "swiglu+l2", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout[out.stdout.index("{"):])["swiglu+l2"]
    for mode in ("forced_hard", "forced_soft"):
        assert len(r[mode]["logits_per_scale"]) == 6
        assert max(x["rel"] for x in r[mode]["logits_per_scale"]) < 1e-5
        assert r[mode]["image"]["max_abs"] < 1e-4
    assert min(r["sampled_soft"]["token_agreement"]) == 1.0
    assert r["diffusion_head"]["rel"] < 1e-5
    t = r["tokenizer"]
    assert t["decode"]["max_abs"] < 1e-4 and t["encode"]["max_abs"] < 1e-4
    assert min(t["vq_index_agreement"]) == 1.0 and t["vq_continuous_residual"]["max_abs"] < 1e-5
