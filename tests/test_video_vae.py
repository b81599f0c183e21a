"""The InfinityStar video VAE decoder: official key layout, chunked causal decoding, strict loading."""

import pytest
import torch

from stepvar.errors import CheckpointError
from stepvar.loading.checkpoints import save_checkpoint
from stepvar.loading.infinitystar import load_video_vae, video_vae_shapes
from stepvar.models.video_vae import VideoVAEConfig, decode_chunks, frames_to_uint8

# The official layout with narrow channels: the same code paths, a fraction of the compute.
NARROW = VideoVAEConfig(block_out_channels=(8, 16, 16, 16, 16))


def test_official_decoder_keys_on_meta():
    shapes = video_vae_shapes()
    assert len(shapes) == 217
    assert shapes["decoder.conv_in.conv.weight"] == (384, 16, 3, 3, 3)
    assert shapes["decoder.up_blocks.1.upsamplers.0.conv.conv.conv.weight"] == (1536, 384, 3, 3, 3)  # x2 space
    assert shapes["decoder.up_blocks.2.upsamplers.0.conv.conv.conv.weight"] == (1536, 384, 3, 3, 3)  # x2 space and time
    assert shapes["decoder.up_blocks.3.upsamplers.0.conv.conv.conv.weight"] == (768, 192, 3, 3, 3)
    assert "decoder.up_blocks.0.upsamplers.0.conv.norm.gamma" not in shapes
    assert shapes["decoder.conv_out.conv.weight"] == (3, 96, 3, 3, 3)
    assert shapes["proj_up.weight"] == (64, 64) and shapes["scale_learnable_parameters"] == (4,)


@pytest.mark.parametrize("T,bounds", [
    (1, [(0, 1)]), (5, [(0, 3), (3, 5)]), (4, [(0, 4)]), (6, [(0, 4), (4, 6)]),
    (21, [(0, 3)] + [(s, s + 2) for s in range(3, 21, 2)]),
])
def test_chunks(T, bounds):
    assert decode_chunks(T) == bounds


@pytest.fixture(scope="module")
def vae():
    return load_video_vae(None, seed=1, cfg=NARROW)[0]


def test_decode_shapes_and_causality(vae):
    z = torch.randn(1, 64, 5, 1, 1, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    assert full.shape == (1, 3, 17, 16, 16) and full.abs().max() <= 1
    assert vae.decode(z[:, :, :1]).shape == (1, 3, 1, 16, 16)
    # A causal decoder: the first 1 + 4k pixel frames depend only on the first 1 + k latent frames.
    assert torch.equal(vae.decode(z[:, :, :3]), full[:, :, :9])


def test_frames_to_uint8_shows_frame_1_as_frame_0():
    video = torch.linspace(-1, 1, 3 * 3 * 2 * 2).view(1, 3, 3, 2, 2)
    frames = frames_to_uint8(video)
    assert frames.shape == (3, 2, 2, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames[0], frames[1])
    assert frames[2].max() == 255 and frames[1, 0, 0, 0] == int((video[0, 0, 1, 0, 0].item() + 1) / 2 * 255)


def _official_file(tmp_path, sd, extra=None):
    full = dict(sd) | {"encoder.conv_in.conv.weight": torch.zeros(8, 3, 3, 3, 3),
                       "quantizer.lfq_detail.mask": torch.ones(64), "proj_down.weight": torch.eye(64)}
    full |= extra or {}
    return save_checkpoint(full, tmp_path / "infinitystar_videovae.pth", "vae")


def test_strict_load_sets_encoder_aside(tmp_path, vae):
    sd = vae.state_dict()
    loaded, report = load_video_vae(_official_file(tmp_path, sd), cfg=NARROW)
    assert report.container == "vae" and len(report.dropped) == 3
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("how", ["renamed", "reshaped", "missing", "unexpected"])
def test_strict_load_refuses(tmp_path, vae, how):
    sd = dict(vae.state_dict())
    key = "decoder.mid_block.resnets.1.conv2.conv.bias"
    named = key
    if how == "renamed":
        sd["decoder.mid_block.resnets.1.conv2.conv.b"] = sd.pop(key)
    elif how == "reshaped":
        sd[key] = sd[key][:10].clone()
    elif how == "missing":
        del sd[key]
    else:
        named = "decoder.attention.weight"
        sd[named] = torch.zeros(2)
    with pytest.raises(CheckpointError) as exc:
        load_video_vae(_official_file(tmp_path, sd), cfg=NARROW)
    assert named in str(exc.value) and "\n" not in str(exc.value)
