"""The self-supervised guard of probabilistic N2V: residuals of held-out blind spots against the
prior and the noise model, per intensity bin; its record in the estimator, the model file and info."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny
from torch import nn

from n2v_estimator import CalibrationWarning, ModelFileError, Noise2VoidDenoiser
from n2v_estimator.cli import main
from n2v_estimator.fit.calibration import MIN_COUNT, N_BINS, blind_spot_calibration, calibration_problems
from n2v_estimator.models.weights import read_model, write_model
from n2v_estimator.nets.noise import NoiseModel

RNG = np.random.default_rng(0)


class KnownPrior(nn.Module):
    """A 'network' whose prior is given: ``mu`` (normalised) and a constant ``tau``, with a noise model."""

    def __init__(self, mu, tau, noise):
        super().__init__()
        self.mu, self.tau, self.noise = mu, tau, noise

    def forward(self, x):
        return torch.cat([self.mu, torch.full_like(self.mu, self.tau)], dim=1)


def known_case(noise_sigma, model_sigma, tau=0.01, impulses=0.0, shape=(4, 1, 64, 64)):
    """Blind spots of a smooth signal with Gaussian noise ``noise_sigma``, predicted exactly (``mu``
    is the signal) with prior scale ``tau``, under a Gaussian noise model of ``model_sigma`` (all normalised)."""
    signal = torch.linspace(-1, 1, shape[-1]).expand(shape).clone()
    x = signal + noise_sigma * torch.from_numpy(RNG.standard_normal(shape)).float()
    hot = torch.from_numpy(RNG.random(shape) < impulses)
    x[hot] += 10 * noise_sigma
    noise = NoiseModel("gaussian", 1).initialise([0.0], [1.0], {"sigma": [model_sigma]}, learn=False)
    mask = torch.ones(shape, dtype=torch.bool)
    return KnownPrior(signal, tau, noise).eval(), [(x, x, mask)]


def test_a_model_that_matches_its_data_is_calibrated_in_every_bin():
    model, batches = known_case(0.2, 0.2)
    calibration = blind_spot_calibration(model, batches, np.array([100.0]), np.array([10.0]))
    assert len(calibration["edges"][0]) == N_BINS + 1 and sum(calibration["count"][0]) == 4 * 64 * 64
    assert calibration["edges"][0][0] == pytest.approx(90, abs=0.5) and calibration["edges"][0][-1] == pytest.approx(
        110, abs=0.5
    )
    assert all(r == pytest.approx(1, abs=0.1) for r in calibration["ratio"][0])
    assert all(s == pytest.approx(1, abs=0.01) for s in calibration["noise_share"][0])
    assert calibration_problems(calibration) == []
    json.dumps(calibration)  # stored in the model file as it is


@pytest.mark.parametrize(
    "noise_sigma, model_sigma, impulses, says",
    [
        (0.2, 0.4, 0.0, "overstates the noise"),  # no prior spread could explain it
        (0.4, 0.2, 0.0, "larger than they claim"),  # understated, and the prior is sure
        (0.2, 0.2, 0.05, "heavy tails"),  # hot pixels
    ],
)
def test_a_model_that_does_not_match_its_data_is_named_with_its_numbers(noise_sigma, model_sigma, impulses, says):
    model, batches = known_case(noise_sigma, model_sigma, impulses=impulses)
    problems = calibration_problems(blind_spot_calibration(model, batches, np.array([0.0]), np.array([1.0])))
    assert problems and says in " ".join(problems)


def test_a_prior_wider_than_its_errors_is_told_from_a_noise_model_too_large():
    model, batches = known_case(0.2, 0.2, tau=0.4)  # exact prior, claimed spread twice the noise
    problems = calibration_problems(blind_spot_calibration(model, batches, np.array([0.0]), np.array([1.0])))
    assert len(problems) == 1 and "the prior is surer than its spread says" in problems[0]


def test_bins_with_few_blind_spots_give_no_verdict():
    model, batches = known_case(0.2, 0.6, shape=(1, 1, 8, 8))  # 16 blind spots per bin
    calibration = blind_spot_calibration(model, batches, np.array([0.0]), np.array([1.0]))
    assert max(calibration["count"][0]) < MIN_COUNT and calibration_problems(calibration) == []


def test_only_the_blind_spots_count():
    model, ((x, _, mask),) = known_case(0.2, 0.2)
    mask = torch.zeros_like(mask)
    mask[..., ::4, ::4] = True
    calibration = blind_spot_calibration(model, [(x, x, mask)], np.array([0.0]), np.array([1.0]))
    assert sum(calibration["count"][0]) == int(mask.sum())


IMAGE = (100 + 20 * RNG.standard_normal((48, 48))).astype(np.float32)


def test_a_noise_model_far_larger_than_the_noise_makes_fit_warn():
    # A known sigma of 100 for noise of sigma 20: the model claims 25 times the residuals' variance.
    with pytest.warns(CalibrationWarning, match=r"overstates the noise.*try .*noise_model=None"):
        denoiser = tiny(noise_model=100.0, blind_spot="network", validation_fraction=0.25).fit(IMAGE)
    assert denoiser.calibration_["patches"] == "validation"
    assert max(denoiser.calibration_["ratio"][0]) < 0.2


def test_the_calibration_is_kept_by_save_load_and_pickle_and_shown_by_info(tmp_path, capsys):
    import pickle

    with pytest.warns(CalibrationWarning):
        denoiser = tiny(noise_model=100.0, blind_spot="network", validation_fraction=0.25).fit(IMAGE)
    denoiser.save(tmp_path / "m.safetensors")
    assert Noise2VoidDenoiser.load(tmp_path / "m.safetensors").calibration_ == denoiser.calibration_
    assert pickle.loads(pickle.dumps(denoiser)).calibration_ == denoiser.calibration_
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "calibration:" in out and "overstates the noise" in out
    assert main(["info", str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == denoiser.calibration_


def test_without_validation_the_calibration_uses_training_patches():
    with pytest.warns(CalibrationWarning, match="training patches"):
        denoiser = tiny(noise_model=100.0, blind_spot="network", validation_fraction=0.0).fit(IMAGE)
    assert denoiser.calibration_["patches"] == "training"


def test_plain_noise2void_has_no_calibration_and_a_refit_drops_it():
    denoiser = tiny(noise_model="gaussian").fit(IMAGE)
    assert "ratio" in denoiser.calibration_
    assert not hasattr(denoiser.set_params(noise_model=None).fit(IMAGE), "calibration_")


@pytest.fixture(scope="module")
def probabilistic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "m.safetensors"
    tiny(noise_model="gaussian").fit(IMAGE).save(path)
    return read_model(path)


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


CRAFTED = {
    "not a mapping": lambda r: "no",
    "a word for a ratio": lambda r: {**r, "ratio": [["os.system"] * 4]},
    "two channels of one": lambda r: {**r, "ratio": r["ratio"] * 2},
    "no patches": lambda r: _without(r, "patches"),
    "no edges": lambda r: _without(r, "edges"),
    "no se": lambda r: _without(r, "se"),
    "more ratios than edges": lambda r: {**r, "ratio": [r["ratio"][0] + [1.0]]},
    "edges out of order": lambda r: {**r, "edges": [r["edges"][0][::-1]]},
    "a missing ratio where blind spots were": lambda r: {**r, "count": [[300] * 4], "ratio": [[None] * 4]},
    "an infinite tail": lambda r: {**r, "tail": [[1e400] * 4]},
    "an escape in patches": lambda r: {**r, "patches": "\x1b]0;owned\x07\x1b[2J"},
    "an extra key": lambda r: {**r, "note": "x" * 10**6},
}


@pytest.mark.parametrize("craft", list(CRAFTED), ids=list(CRAFTED))
def test_a_crafted_calibration_record_is_refused_by_load_and_by_info_in_one_line(
    tmp_path, capsys, probabilistic_file, craft
):
    """info loaded such records and then ended in a KeyError or IndexError traceback (edges or se
    missing, more ratios than edges), or printed their strings raw."""
    tensors, document = probabilistic_file
    document = json.loads(json.dumps(document))
    document["fitted"]["calibration"] = CRAFTED[craft](document["fitted"]["calibration"])
    write_model(tmp_path / "crafted.safetensors", tensors, document)
    with pytest.raises(ModelFileError, match="the calibration record is malformed"):
        Noise2VoidDenoiser.load(tmp_path / "crafted.safetensors")
    assert main(["info", str(tmp_path / "crafted.safetensors")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and len(err) < 500 and "\x1b" not in err, err


# How well the guard catches wrong noise models in real fits (a one-sigma model of Poisson noise on a
# dark image, speckle): benchmarks/claims.py --check (they need hundreds of training steps).
