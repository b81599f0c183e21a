"""HART pipeline: untrained presets run end to end; the 0.7B preset names what to download."""

import pytest
import torch

from stepvar.errors import ConfigError
from stepvar.hart_pipeline import HartPipeline, load_hart_pipeline
from stepvar.hart_text import StandInTextEncoder
from stepvar.models.hart import HartConfig, HartTransformer
from stepvar.models.hart_presets import HartPreset
from stepvar.models.hart_tokenizer import HartTokenizer, HartTokenizerConfig
from stepvar.pruning.registry import make_pruner


def _tiny_pipeline():
    cfg = HartConfig(depth=2, width=64, heads=2, context_tokens=8, context_dim=16, patch_nums=(1, 2, 4, 6, 8),
                     vocab=32, latent_channels=4, diff_width=32, diff_depth=1)
    tcfg = HartTokenizerConfig(vocab=32, latent_channels=4, ch=32, ch_mult=(1, 2))
    preset = HartPreset("tiny-test", cfg, tcfg, trained=False, description="test", sampling=dict(top_k_coarse=8, top_k_fine=8))
    torch.manual_seed(0)
    return HartPipeline(preset, HartTransformer(cfg).eval(), HartTokenizer(tcfg).eval(), StandInTextEncoder(16, 8), "cpu", None)


def test_pipeline_generates_and_records():
    pipe = _tiny_pipeline()
    dense = pipe.generate(["a red apple"], make_pruner("dense"), pipe.sampling(seed=1))
    pruned = pipe.generate(["a red apple"], make_pruner("stepvar", keep=0.4), pipe.sampling(seed=1))
    assert dense.images.dtype == torch.uint8 and dense.images.shape == (1, 16, 16, 3)
    assert dense.record["status"].startswith("untrained") and dense.record["method"]["method"] == "dense"
    assert pruned.token_passes < dense.token_passes and pruned.record["pruned_steps"] == [2, 3, 4]


def test_0p7b_names_what_to_download(tmp_path):
    with pytest.raises(ConfigError, match="hart-0.7b-1024px"):
        load_hart_pipeline("hart-0.7b")
    with pytest.raises(ConfigError, match="Qwen2-VL-1.5B-Instruct"):
        load_hart_pipeline("hart-0.7b", weights=tmp_path)
