"""Models: forward/backward on odd sizes, config round trip, validation of configs."""

import json

import pytest
import torch

from napari_deeptrack.nn import MODELS, build_model, list_models, model_config

H, W = 37, 45  # odd, not multiples of any power of two

CONFIGS = {
    "MLP": (
        {"type": "MLP", "in_features": 2 * H * W, "out_features": 3, "hidden": [16, 8], "dropout": 0.1},
        (3,),
    ),
    "CNN": ({"type": "CNN", "in_channels": 2, "out_features": 3, "channels": [4, 8], "dense": [8]}, (3,)),
    "UNet": (
        {"type": "UNet", "in_channels": 2, "out_channels": 3, "depth": 3, "base_channels": 4},
        (3, H, W),
    ),
    "UNet-bilinear": (
        {
            "type": "UNet",
            "in_channels": 2,
            "out_channels": 1,
            "depth": 2,
            "base_channels": 4,
            "upsampling": "bilinear",
            "norm": "group",
        },
        (1, H, W),
    ),
    "EncoderDecoder": (
        {"type": "EncoderDecoder", "in_channels": 2, "out_channels": 2, "depth": 2, "base_channels": 4},
        (2, H, W),
    ),
    "Pix2Pix": (
        {
            "type": "Pix2Pix",
            "in_channels": 2,
            "out_channels": 1,
            "base_channels": 4,
            "depth": 2,
            "disc_base_channels": 4,
        },
        (1, H, W),
    ),
}


def test_every_registered_model_is_covered():
    # the five models of issue 4 (other modules may register more)
    assert {c[0]["type"] for c in CONFIGS.values()} == {"MLP", "CNN", "UNet", "EncoderDecoder", "Pix2Pix"}
    assert {"MLP", "CNN", "UNet", "EncoderDecoder", "Pix2Pix"} <= set(list_models())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_backward_odd_size(name):
    cfg, out_shape = CONFIGS[name]
    model = build_model(cfg)
    x = torch.randn(2, 2, H, W, requires_grad=True)
    y = model(x)
    assert y.shape == (2, *out_shape)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if name == "Pix2Pix":
        assert y.abs().max() <= 1.0  # tanh output
        d = model.discriminator(x, y)
        assert d.dim() == 4 and d.shape[1] == 1 and d.shape[-1] < W  # one logit per patch


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip_rebuilds_identical_model(name):
    cfg, _ = CONFIGS[name]
    torch.manual_seed(0)
    a = build_model(cfg)
    stored = json.loads(json.dumps(model_config(a)))  # what a bundle keeps
    assert stored["type"] == cfg["type"]
    b = build_model(stored)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)
    b.load_state_dict(sa)
    a.eval()
    b.eval()
    x = torch.randn(2, 2, H, W)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_unet_output_size_matches_any_input_and_z_bins():
    net = build_model(
        {"type": "UNet", "in_channels": 1, "out_channels": 7, "depth": 4, "base_channels": 4}
    ).eval()
    for h, w in [(16, 16), (17, 31), (5, 9), (64, 33)]:
        assert net(torch.randn(1, 1, h, w)).shape == (1, 7, h, w)


def test_encoder_decoder_has_no_skip_connections():
    ed = build_model({"type": "EncoderDecoder", "depth": 2, "base_channels": 4})
    un = build_model({"type": "UNet", "depth": 2, "base_channels": 4})
    # the decoder blocks of the U-Net take the concatenated skip (twice the channels)
    assert ed.up_blocks[0][0].in_channels * 2 == un.up_blocks[0][0].in_channels


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"type": "Transformer"}, "unknown model type"),
        ({"type": "UNet", "depht": 3}, r"unknown parameter\(s\) \['depht'\]"),
        ({"type": "UNet", "depth": -1}, "depth must be an integer >= 0"),
        ({"type": "CNN", "norm": "layer"}, "norm must be one of"),
        ({"type": "MLP", "in_features": 10, "dropout": 1.5}, r"dropout must lie in \[0, 1\)"),
        ({"in_channels": 1}, "'type' key"),
    ],
)
def test_bad_configs_raise_clear_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_mlp_rejects_wrong_input_size():
    net = build_model({"type": "MLP", "in_features": 100})
    with pytest.raises(ValueError, match="expects 100 input values"):
        net(torch.randn(2, 1, 9, 9))


def test_user_module_has_no_config():
    assert model_config(torch.nn.Conv2d(1, 1, 3)) is None
    assert set(MODELS) >= {"MLP", "CNN", "UNet", "EncoderDecoder", "Pix2Pix"}
