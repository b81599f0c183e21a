import math

import pytest
import torch
import torch.nn.functional as F

from stepvar.errors import ConfigError
from stepvar.models.bsq_vae import (
    VAE_PRESETS,
    BSQVAE,
    VAEConfig,
    bits_to_codes,
    bits_to_indices,
    canonicalize_vae_keys,
    codes_to_bits,
    indices_to_bits,
    multiscale_encode,
    patchify_tokens,
    quantize,
    unpatchify,
    vae_preset_for_file,
)

TINY = VAEConfig(codebook_dim=8, base_ch=16, ch_mult=(1, 2, 2), groups=8)


def _meta_vae(preset: str) -> BSQVAE:
    with torch.device("meta"):
        return BSQVAE(VAE_PRESETS[preset])


def _expected_keys(ch_mult, n_res=2):
    """The official key set, written out independently from the module code."""
    base = 128
    keys = set()

    def conv(n):
        keys.update({f"{n}.conv.weight", f"{n}.conv.bias"})

    def norm(n):
        keys.update({f"{n}.norm.weight", f"{n}.norm.bias"})

    def res(n, c_in, c_out):
        norm(f"{n}.norm1"), conv(f"{n}.conv1"), norm(f"{n}.norm2"), conv(f"{n}.conv2")
        if c_in != c_out:
            conv(f"{n}.nin_shortcut")

    n = len(ch_mult)
    in_mult = (1,) + tuple(ch_mult[:-1])
    conv("encoder.conv_in")
    for i in range(n):
        c_in = base * in_mult[i]
        for j in range(n_res):
            res(f"encoder.down.{i}.block.{j}", c_in, base * ch_mult[i])
            c_in = base * ch_mult[i]
        if i < n - 1:
            conv(f"encoder.down.{i}.downsample.conv")
    for p in ("encoder", "decoder"):
        res(f"{p}.mid.block_1", 1, 1), res(f"{p}.mid.block_2", 1, 1)
        norm(f"{p}.norm_out"), conv(f"{p}.conv_out")
    conv("decoder.conv_in")
    c = base * ch_mult[-1]
    for i in reversed(range(n)):
        for j in range(n_res + 1):
            res(f"decoder.up.{i}.block.{j}", c, base * ch_mult[i])
            c = base * ch_mult[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv")
    keys.add("quantizer.lfq.mask")
    return keys


def test_d32_official_keys_and_shapes():
    sd = _meta_vae("d32").state_dict()
    assert set(sd) == _expected_keys((1, 2, 4, 4, 4))
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["decoder.conv_in.conv.weight"] == (512, 32, 3, 3)
    assert shapes["decoder.conv_out.conv.weight"] == (3, 128, 3, 3)
    assert shapes["encoder.conv_in.conv.weight"] == (128, 3, 3, 3)
    assert shapes["encoder.conv_out.conv.weight"] == (32, 512, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.conv.weight"] == (256, 128, 1, 1)
    assert shapes["encoder.down.3.downsample.conv.conv.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.up.1.block.0.nin_shortcut.conv.weight"] == (256, 512, 1, 1)
    assert shapes["decoder.up.0.block.0.nin_shortcut.conv.weight"] == (128, 256, 1, 1)
    assert shapes["decoder.up.4.upsample.conv.conv.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.norm_out.norm.weight"] == (128,)
    assert shapes["quantizer.lfq.mask"] == (32,)


def test_patchify_preset_layout():
    cfg = VAE_PRESETS["d56_patchify"]
    assert (cfg.stride, cfg.token_stride, cfg.transformer_bits) == (8, 16, 56)
    assert (VAE_PRESETS["d32"].stride, VAE_PRESETS["d32"].token_stride) == (16, 16)
    assert set(_meta_vae("d56_patchify").state_dict()) == _expected_keys((1, 2, 4, 4))


def test_mask_values():
    vae = BSQVAE(TINY)
    assert vae.quantizer.lfq.mask.tolist() == [128, 64, 32, 16, 8, 4, 2, 1]
    assert vae.quantizer.lfq.mask.dtype == torch.int64


@pytest.mark.parametrize("name, preset", [
    ("weights/infinity_vae_d32reg.pth", "d32reg"),
    ("infinity_vae_d32_reg.pth", "d32reg"),
    ("infinity_vae_d32.pth", "d32"),
    ("/x/infinity_vae_d16.pth", "d16"),
    ("infinity_vae_d64.pth", "d64"),
    ("infinity_vae_d56_f8_14_patchify.pth", "d56_patchify"),
    ("infinity_2b_reg.pth", None),
    ("infinity_vae_d48.pth", None),
])
def test_vae_preset_for_file(name, preset):
    assert vae_preset_for_file(name) == preset


def test_groups_must_divide_widths():
    with pytest.raises(ConfigError):
        VAEConfig(codebook_dim=8, base_ch=16, ch_mult=(1, 2), groups=32)


def test_encode_decode_shapes():
    torch.manual_seed(0)
    vae = BSQVAE(TINY).eval()
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(img)
        out = vae.decode(z * 10)
    assert z.shape == (2, 8, 8, 8) and z.dtype == torch.float32
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= -1 and out.max() <= 1


def test_quantize_and_bits_roundtrip():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, 5)
    bits, codes = quantize(z)
    assert bits.dtype == torch.bool
    assert torch.allclose(codes.abs(), torch.full_like(codes, 1 / math.sqrt(8)))
    assert torch.equal(bits, z > 0)
    assert torch.allclose(codes.norm(dim=1), torch.ones(2, 4, 5))
    assert torch.equal(bits_to_codes(bits), codes)
    assert torch.equal(codes_to_bits(bits_to_codes(bits)), bits)
    bits_last = bits.permute(0, 2, 3, 1)
    assert torch.equal(bits_to_codes(bits_last, dim=-1), codes.permute(0, 2, 3, 1))


@pytest.mark.parametrize("d", [8, 64])
def test_indices_roundtrip(d):
    torch.manual_seed(0)
    bits = torch.rand(3, d, 4, 4) > 0.5
    idx = bits_to_indices(bits)
    assert idx.shape == (3, 4, 4) and idx.dtype == torch.int64
    assert torch.equal(indices_to_bits(idx, d), bits)
    assert torch.equal(indices_to_bits(idx, d, dim=-1), bits.permute(0, 2, 3, 1))
    if d == 8:
        weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1])
        assert torch.equal(idx, (bits.long() * weights[None, :, None, None]).sum(1))


def test_multiscale_encode():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 8, 8) * 2
    scales = [(1, 1), (2, 2), (4, 3), (8, 8)]
    out = multiscale_encode(z, scales)
    assert [tuple(b.shape) for b in out.bits] == [(2, h, w, 8) for h, w in scales]
    assert [tuple(r.shape) for r in out.residual_inputs] == [(2, 8, h, w) for h, w in scales]
    assert [tuple(n.shape[-2:]) for n in out.next_inputs] == scales[1:]

    ups = [F.interpolate(bits_to_codes(b, dim=-1).permute(0, 3, 1, 2), size=(8, 8),
                         mode="bilinear", align_corners=False) for b in out.bits]
    assert torch.allclose(out.summed_BdHW, sum(ups), atol=1e-6)
    # The first residual input is the area-mean of z; the k-th next input is the partial sum resized.
    assert torch.allclose(out.residual_inputs[0], z.mean((2, 3), keepdim=True), atol=1e-6)
    partial = ups[0] + ups[1]
    expect = F.interpolate(partial, size=(4, 3), mode="bilinear", align_corners=False)
    assert torch.allclose(out.next_inputs[1], expect, atol=1e-6)
    assert (z - out.summed_BdHW).norm() < z.norm()


def test_multiscale_rejects_oversized_scale():
    with pytest.raises(ConfigError):
        multiscale_encode(torch.zeros(1, 4, 2, 2), [(1, 1), (4, 4)])


def test_canonicalize_vae_keys_roundtrip():
    sd = BSQVAE(TINY).state_dict()
    plain = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
              .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias"): v
             for k, v in sd.items()}
    assert "decoder.up.1.upsample.conv.weight" in plain and "encoder.norm_out.weight" in plain
    mapped = canonicalize_vae_keys(plain)
    assert list(mapped) == list(sd)
    assert all(mapped[k] is sd[k] for k in sd)
    assert list(canonicalize_vae_keys(sd)) == list(sd)
    assert canonicalize_vae_keys({"foo.conv1.weight": 1}) == {"foo.conv1.weight": 1}


def test_patchify_channel_order():
    torch.manual_seed(0)
    codes = torch.randn(2, 3, 4, 6)
    tok = patchify_tokens(codes)
    assert tok.shape == (2, 12, 2, 3)
    expect = torch.empty_like(tok)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                expect[:, c * 4 + 2 * dy + dx] = codes[:, c, dy::2, dx::2]
    assert torch.equal(tok, expect)
    assert torch.equal(unpatchify(tok), codes)
