"""The examples a reader runs first produce what the README says they do."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_camera_example_writes_a_titled_before_after_figure_with_a_zoomed_crop(tmp_path):
    pytest.importorskip("matplotlib")
    example = _example("denoise_camera")
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(0, 255, 96), (96, 1))
    noisy = clean + rng.normal(0, 25, clean.shape)
    denoised = clean + rng.normal(0, 5, clean.shape)
    figure = example.before_after_figure(noisy, denoised, clean, crop=(slice(10, 42), slice(50, 82)))
    titles = [ax.get_title() for ax in figure.axes]
    psnr = [10 * np.log10(255**2 / np.mean((image - clean) ** 2)) for image in (noisy, denoised)]
    assert titles[:3] == [f"noisy: {psnr[0]:.2f} dB", f"denoised (Noise2Void): {psnr[1]:.2f} dB", "clean (reference)"]
    assert all("32x32 crop" in title for title in titles[3:6])
    assert [ax.get_images()[0].get_array().shape for ax in figure.axes] == [(96, 96)] * 3 + [(32, 32)] * 3
    assert all(len(ax.patches) == 1 for ax in figure.axes[:3])  # the crop, boxed in the full images
    figure.savefig(tmp_path / "before_after.png")
    assert (tmp_path / "before_after.png").stat().st_size > 0


@pytest.mark.slow
def test_the_bioimageio_example_exports_and_checks_a_saved_model(tmp_path, capsys):
    pytest.importorskip("bioimageio.core", reason='the [bioimageio] extra is not installed')
    from conftest import tiny

    model = tmp_path / "model.safetensors"
    tiny(depth=2).fit(np.random.default_rng(0).normal(100, 20, (64, 64))).save(model)
    _example("export_bioimageio").main(["--model", str(model), "--out", str(tmp_path / "model.zip")])
    printed = capsys.readouterr().out
    assert printed.count(": passed") == 2 and "transform identical = True" in printed
    differences = [float(line.split("= ")[1].split()[0]) for line in printed.splitlines() if "max |diff|" in line]
    assert len(differences) == 2 and max(differences) < 1e-5
