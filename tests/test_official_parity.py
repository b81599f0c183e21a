"""Parity with the official code on random weights (scripts/official_parity.py).

The official repositories are never part of this project: these tests run only where a copy was
exported outside it and named by STEPVAR_OFFICIAL_CODE (its fastvar/ and infinity/ folders), and are
skipped elsewhere.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import official_copy

FASTVAR = official_copy("fastvar") / "Infinity" if official_copy("fastvar") else None
INFINITY = official_copy("infinity")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "official_parity.py"

pytestmark = pytest.mark.slow


def _run(*args):
    # A fresh process: the script puts stand-ins for CUDA-only packages into sys.modules.
    r = subprocess.run([sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(FASTVAR is None or not (FASTVAR / "infinity").is_dir(),
                    reason="STEPVAR_OFFICIAL_CODE names no copy of the FastVAR release")
def test_fastvar_presets_prune_skip_and_cache_exactly_as_the_release():
    for row in _run("fastvar", "--release", FASTVAR, "--budgets", "0.25M,0.60M,1M"):
        rel, ours, sel = row["release"], row["stepvar"], row["selections"]
        assert rel["pruned"] == ours["pruned"] and rel["skipped"] == ours["skipped"], row["budget"]
        assert rel["layers"] == ours["layers"] and rel["cached"][-1:] == ours["cached"], row["budget"]
        assert sel["release"] == sel["stepvar"] > 0
        assert sel["identical_sets"] == sel["row_lists"], row["budget"]


@pytest.mark.skipif(INFINITY is None or not (INFINITY / "infinity").is_dir(),
                    reason="STEPVAR_OFFICIAL_CODE names no copy of the official Infinity")
def test_official_numerics_are_closer_to_the_official_code():
    res = _run("numerics", "--release", INFINITY, "--budget", "0.25M")
    assert res["official"]["max_abs_logit_diff"] < res["exact"]["max_abs_logit_diff"] / 5
    assert res["official"]["per_scale"][0] < 1e-5  # scale 0: one key, the text attentions decide everything
