"""Real bitstreams and the .kdic container."""

from __future__ import annotations

import pytest
import torch

from tests.kdic.conftest import tiny


@pytest.mark.parametrize("name", ["mbt2018-mean", "bmshj2018-hyperprior", "s2c-conv"])
def test_round_trip_bit_exact_and_equal_to_eval_forward(name: str, photo) -> None:
    from kdic_cli.codec_io import compress_image, decompress_bytes, pad_image

    model = tiny(name)
    model.update(force=True)
    x = photo[:, :100, :150]  # not a multiple of 64: padding is exercised
    data = compress_image(model, x)
    assert compress_image(model, x) == data  # same bytes every run
    rec = decompress_bytes(model, data)
    assert torch.equal(rec, decompress_bytes(model, data))
    with torch.no_grad():
        xp, _ = pad_image(x[None])
        ref = model(xp)["x_hat"][0, :, :100, :150].clamp(0, 1)
    assert rec.shape == x.shape
    assert torch.equal(rec, ref)


def test_autoregressive_round_trip(photo) -> None:
    from kdic_cli.codec_io import compress_image, decompress_bytes

    model = tiny("mbt2018")
    model.update(force=True)
    x = photo[:, :64, :64]
    data = compress_image(model, x)
    assert compress_image(model, x) == data
    assert decompress_bytes(model, data).shape == x.shape


@pytest.mark.slow
def test_bpp_from_bytes_matches_likelihood_estimate(trained_codec) -> None:
    """With a trained codec (aux loss fitted the quantiles) the entropy-coded payload is within
    a few percent of the likelihood estimate; the container costs under 100 bytes more."""
    from kdic_cli.codec_io import compress_image, pad_image
    from kdic_cli.distill import bpp_from_likelihoods
    from kdic_cli.metrics import bpp
    from kdic_cli.models import load_model
    from shared.builtin_data import PhotoImages

    model, _ = load_model(trained_codec)
    x = PhotoImages("val")[0]
    xp, _ = pad_image(x[None])
    with torch.no_grad():
        est = bpp_from_likelihoods(model(xp)["likelihoods"], x.shape[-2] * x.shape[-1]).item()
    with torch.no_grad():
        strings = model.compress(xp)["strings"]
    payload = sum(len(s) for group in strings for s in group)  # what compressai counts
    real = bpp(payload, *x.shape[-2:])
    assert est > 0.05
    assert abs(real - est) / est < 0.05, (real, est)
    # the .kdic container adds a fixed header, the shape and length prefixes: < 100 bytes
    assert 0 < len(compress_image(model, x)) - payload < 100


def test_container_refuses_wrong_model_and_damage(photo) -> None:
    from kdic_cli.codec_io import ContainerError, compress_image, decompress_bytes

    a, b = tiny("mbt2018-mean"), tiny("mbt2018-mean")  # same architecture, other weights
    a.update(force=True)
    b.update(force=True)
    data = compress_image(a, photo)
    with pytest.raises(ContainerError, match="another model"):
        decompress_bytes(b, data)
    with pytest.raises(ContainerError, match="truncated"):
        decompress_bytes(a, data[:-7])
    with pytest.raises(ContainerError, match="magic"):
        decompress_bytes(a, b"JUNK" + data[4:])
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    with pytest.raises(ContainerError, match="CRC"):
        decompress_bytes(a, bytes(flipped))


def test_metrics_on_8bit() -> None:
    from kdic_cli.metrics import bd_rate, psnr

    x = torch.full((3, 8, 8), 0.5)
    assert psnr(x, x + 0.001) == float("inf")  # below one 8-bit level: identical files
    assert bd_rate([0.2, 0.4], [30, 32], [0.2, 0.4], [30, 32]) == pytest.approx(0, abs=1e-6)
    worse = bd_rate([0.2, 0.4, 0.8], [30, 32, 34], [0.22, 0.44, 0.88], [30, 32, 34])
    assert worse == pytest.approx(10, abs=0.5)
    # curves whose PSNR ranges barely overlap (1 dB of 6): n/a, not an extrapolated number
    assert bd_rate([0.2, 0.4, 0.8], [30, 32, 34], [0.2, 0.4, 0.8], [33, 35, 36]) is None


def test_rd_cost_is_the_training_objective_on_8bit_images() -> None:
    from kdic_cli.metrics import psnr, rd_cost, to_8bit

    torch.manual_seed(0)
    x = torch.rand(3, 16, 16)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    mse = torch.mean((to_8bit(x) - to_8bit(x_hat)) ** 2).item()
    expected = 0.3 + 0.0035 * 255**2 * mse  # compressai's RateDistortionLoss on the same MSE
    assert rd_cost(0.3, psnr(x, x_hat), 0.0035) == pytest.approx(expected, rel=1e-9)
