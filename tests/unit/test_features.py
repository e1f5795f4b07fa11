"""The feature extractor: grid, projection, the literal operation order, weights handling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exdd.offline.features import build_extractor, grid_of, make_projection, projection_sha256
from exdd.offline.weights import WeightsError, load_backbone


@pytest.fixture(scope="module")
def extractor():
    return build_extractor("random:0", d=24, projection_seed=1, input_hw=(96, 64))


def test_shape_grid_and_fingerprint(extractor):
    model, info = extractor
    x = torch.randint(0, 256, (2, 96, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        f = model(x)
    assert tuple(f.shape) == (2, 12, 8, 24) and f.dtype == torch.float32
    assert info["grid"] == [12, 8] == list(grid_of((96, 64)))
    assert grid_of((632, 224)) == (79, 28)
    assert info["weights"] == "random:0" and info["d"] == 24
    assert info["projection_sha256"] == projection_sha256(make_projection(24, 1))


def test_projection_columns_unit_and_seeded():
    p = make_projection(16, 7)
    assert p.shape == (1536, 16)
    np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p, make_projection(16, 7))
    assert not np.array_equal(p, make_projection(16, 8))


def test_projection_first_equals_literal_order(extractor):
    """pool -> upsample -> concat(1536) -> project equals the extractor's project-first order."""
    model, _ = extractor
    x = torch.randint(0, 256, (1, 96, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        got = model(x)
        z = (x.permute(0, 3, 1, 2).float() - model.mean) / model.std
        l2, l3 = model.backbone(z)
        l2 = F.avg_pool2d(l2, 3, 1, 1)
        l3 = F.interpolate(F.avg_pool2d(l3, 3, 1, 1), size=l2.shape[-2:], mode="bilinear", align_corners=False)
        cat = torch.cat([l2, l3], 1).permute(0, 2, 3, 1)
        ref = cat @ torch.cat([model.p2, model.p3], 0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_raw_features_times_the_projection_are_the_features(extractor):
    """raw() is what a fitted projection is fitted on: the 1536-d features the projection multiplies."""
    model, _ = extractor
    x = torch.randint(0, 256, (1, 96, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        raw, got = model.raw(x), model(x)
    assert tuple(raw.shape) == (1, 12, 8, 1536)
    ref = raw @ torch.cat([model.p2, model.p3], 0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_weights_errors_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="random:SEED"):
        load_backbone("random:abc")
    with pytest.raises(WeightsError, match="not 'imagenet'"):
        load_backbone(str(tmp_path / "nope.pth"))
    from safetensors.torch import save_file

    partial = tmp_path / "partial.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(partial))
    with pytest.raises(WeightsError, match="lacks"):
        load_backbone(str(partial))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="unreadable"):
        load_backbone(str(bad))


def test_partial_checkpoint_round_trip(tmp_path):
    """A checkpoint holding only conv1, bn1, layer1..3 (as the stand-in weights) loads, in fp16 too."""
    from safetensors.torch import save_file

    model, wid = load_backbone("random:3")
    sd = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    loaded, wid2 = load_backbone(str(path))
    assert wid2.startswith("file:w.safetensors@sha256:")
    torch.testing.assert_close(loaded.layer3[0].conv1.weight, model.layer3[0].conv1.weight.half().float())


def test_imagenet_unavailable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy; no internet here
    try:
        load_backbone("imagenet")
    except WeightsError as e:
        assert "ImageNet weights" in str(e) and "--weights PATH" in str(e)
    else:
        pytest.skip("ImageNet weights were downloadable on this machine")
