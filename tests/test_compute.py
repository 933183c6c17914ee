"""Memory layout and precision: every path gives the reference (float32, default layout) output
within a tolerance, and the weights, loss and statistics stay float32."""

import numpy as np
import pytest
import torch
from conftest import tiny

from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.unet import network_description
from n2v_estimator.predict.tiling import predict_tiled
from n2v_estimator.runtime import compute as _compute
from n2v_estimator.runtime.compute import autocast, channels_last, prefers_channels_last, resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = dict(
    depth=2,
    n_filters=8,
    kernel_size=3,
    batch_norm=True,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=True,
    blind_spot="mask",
)
NETWORKS = {
    "2d": (2, 1, {}),
    "grouped": (2, 3, {}),
    "joint": (2, 3, {"independent_channels": False}),
    "n2v2": (2, 1, {"blurpool": True, "skip_skipone": True}),
    "3d": (3, 1, {}),
}


def network(name, seed=0):
    ndim, channels, overrides = NETWORKS[name]
    model = build_unet(network_description(ndim, channels, {**SETTINGS, **overrides}), seed=seed)
    # Batch statistics that are not the identity, so that eval mode is exercised for real.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def batch(name):
    ndim, channels, _ = NETWORKS[name]
    shape = (2, channels) + ((20, 28) if ndim == 2 else (8, 12, 16))
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_channels_last_gives_the_reference_output(name):
    model, x = network(name), batch(name)
    with torch.no_grad():
        expected = model(x)
        actual = channels_last(network(name))(channels_last(x))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_bfloat16_autocast_stays_close_to_the_reference(name):
    model, x = network(name), batch(name)
    with torch.no_grad():
        expected = model(x)
        with autocast("cpu", "bf16"):
            actual = model(x).float()
    assert (actual - expected).abs().max() <= 0.05 * expected.abs().max()


def test_channels_last_training_follows_the_reference_training():
    def losses(layout):
        torch.manual_seed(0)
        model = layout(network("2d").train())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        out = []
        for step in range(4):
            x = layout(torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(step)))
            loss = (model(x) - x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    np.testing.assert_allclose(losses(channels_last), losses(lambda m: m), rtol=1e-4)


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_tiled_prediction_in_every_precision_stays_close_to_the_reference(precision):
    model = network("2d")
    images = np.random.default_rng(0).normal(size=(1, 1, 70, 90)).astype(np.float32)
    reference = predict_tiled(network("2d"), images, (32, 32), (16, 16), 4, torch.device("cpu"), multiple=4)
    out = predict_tiled(model, images, (32, 32), (16, 16), 4, torch.device("cpu"), multiple=4, precision=precision)
    tolerance = 1e-5 if precision == "32" else 0.05
    assert np.abs(out - reference).max() <= tolerance * np.abs(reference).max()
    assert out.dtype == np.float32


def test_a_bfloat16_fit_keeps_float32_weights_and_statistics_and_denoises_like_float32(camera_pair):
    _, noisy = camera_pair
    reference = tiny(precision="32").fit(noisy)
    fitted = tiny(precision="bf16").fit(noisy)
    assert all(p.dtype == torch.float32 for p in fitted.model_.state_dict().values() if p.is_floating_point())
    assert fitted.mean_.dtype == np.float64
    assert np.isfinite([h["train_loss"] for h in fitted.history_]).all()
    a, b = reference.transform(noisy), fitted.transform(noisy)
    assert np.abs(a - b).mean() <= 0.1 * noisy.std()  # same data, same seeds, close weights


def test_auto_precision_follows_the_device_and_the_cpu(monkeypatch):
    monkeypatch.setattr(_compute, "_cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu", ndim=3) == "32"  # bfloat16 3D training went NaN
    monkeypatch.setattr(_compute, "_cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32"
    assert resolve_precision("auto", "cuda") == "16-mixed"
    assert resolve_precision("auto", "mps") == "32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("32", "cuda") == "32"
    assert resolve_precision(32, "cpu") == "32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("16-mixed", "cpu")


def test_auto_precision_predicts_in_float32_everywhere_and_a_given_one_is_kept(monkeypatch):
    monkeypatch.setattr(_compute, "_cpu_has_native_bf16", lambda: True)
    for device in ("cpu", "cuda", "mps"):
        assert resolve_precision("auto", device, training=False) == "32"
    assert resolve_precision("bf16", "cpu", training=False) == "bf16"
    assert resolve_precision("16-mixed", "cuda", training=False) == "16-mixed"


def test_a_model_trained_in_bfloat16_predicts_in_float32_by_default(monkeypatch, camera_pair):
    _, noisy = camera_pair
    monkeypatch.setattr(_compute, "_cpu_has_native_bf16", lambda: True)  # what 'auto' picks on such a CPU
    fitted = tiny(precision="auto").fit(noisy)
    assert fitted.history_  # trained in bfloat16 (emulated where the CPU has none)
    exact = fitted.transform(noisy)
    np.testing.assert_array_equal(exact, fitted.set_params(precision="32").transform(noisy))
    reduced = fitted.set_params(precision="bf16").transform(noisy)
    assert 0 < np.abs(reduced - exact).max() < 0.05 * np.ptp(exact)  # asked for: bfloat16, which rounds


def test_float32_on_cuda_switches_tensorfloat32_off_for_its_duration(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    with autocast("cuda", "32"):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_grouped_networks_stay_in_the_default_layout_in_bfloat16():
    assert prefers_channels_last(network("2d"), "bf16") and prefers_channels_last(network("grouped"), "32")
    assert not prefers_channels_last(network("grouped"), "bf16")


def test_saved_weights_are_contiguous_after_channels_last_training(tmp_path, camera_pair):
    from n2v_estimator.models import weights as _weights

    _, noisy = camera_pair
    tiny().fit(noisy).save(tmp_path / "model.safetensors")
    tensors, _ = _weights.read_model(tmp_path / "model.safetensors")
    assert all(t.is_contiguous() for t in tensors.values())
