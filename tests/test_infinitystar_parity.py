"""Parity with the official InfinityStar code (random tiny weights, forced bits); skipped without its export.

The figures for docs/infinitystar.md come from scripts/infinitystar_parity.py; this test runs its
smaller case and bounds the differences.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "infinitystar_parity.py"
from conftest import official_copy

OFFICIAL = official_copy("infinitystar")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(OFFICIAL is None or not (OFFICIAL / "infinity/models/infinity.py").is_file(),
                       reason="STEPVAR_OFFICIAL_CODE names no export of FoundationVision/InfinityStar"),
]


@pytest.fixture
def parity():
    """The script as a module; the official modules and stand-ins it imports are removed afterwards."""
    before, path = set(sys.modules), list(sys.path)
    spec = importlib.util.spec_from_file_location("infinitystar_parity", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    for name in set(sys.modules) - before:
        del sys.modules[name]
    sys.path[:] = path


def test_logits_with_forced_bits_match_the_official_code(parity):
    r = parity.run_case(parity.load_official(OFFICIAL), "17f-repeats")
    assert r["passes"] == 31 and r["scales"] == 22
    assert r["max_abs_logit"] > 0.1  # the comparison is not between zeros
    assert r["max_abs_logit_diff"] <= 1e-5 * r["max_abs_logit"]
    assert r["latent_shapes_equal"] and r["max_abs_latent_diff"] <= 1e-6
    assert r["apg_max_abs_diff"] <= 1e-5
