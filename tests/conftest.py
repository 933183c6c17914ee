import os

import numpy as np
import pytest
import torch
from skimage import data

# pytest-xdist runs one worker per core: each computes on one thread, so that the workers do not
# oversubscribe the cores. Run alone, the tests use two threads (at most: the machines are shared).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
# N2V_TEST_NATIVE_BF16=1 (or 0) runs the tests as on a CPU with (without) native bfloat16, where
# precision="auto" trains in bfloat16 (float32): both paths, whatever CPU runs the tests.
if os.environ.get("N2V_TEST_NATIVE_BF16") in ("0", "1"):
    from n2v_estimator.runtime import compute as _compute

    _compute._cpu_has_native_bf16 = {"0": lambda: False, "1": lambda: True}[os.environ["N2V_TEST_NATIVE_BF16"]]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # And so do the processes the tests start (the command line, notebooks, examples, ranks): OpenMP
    # threads that spin while another worker holds the core slowed a notebook test from 16 s to 60.
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster, and avoids contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed=0):
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def psnr(estimate, clean, data_range=255.0):
    mse = np.mean((np.asarray(estimate, np.float64) - np.asarray(clean, np.float64)) ** 2)
    return 10 * np.log10(data_range**2 / mse)


@pytest.fixture(scope="session")
def camera_pair():
    """A 128x128 crop of skimage's camera and a Gaussian-noisy copy (sigma 25, seed 0)."""
    clean = data.camera()[256:384, 256:384].astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    return clean, noisy


TINY = dict(
    patch_size=16,
    batch_size=4,
    max_epochs=2,
    steps_per_epoch=3,
    depth=1,
    n_filters=4,
    random_state=0,
    device="cpu",
    precision="32",  # the reference path: exact comparisons; test_compute checks the others against it
)


def tiny(**overrides):
    """A denoiser that trains in a fraction of a second: :data:`TINY` with ``overrides``."""
    from n2v_estimator import Noise2VoidDenoiser

    return Noise2VoidDenoiser(**{**TINY, **overrides})


def read_model_file(path):
    """A saved model file's tensors and its description (the JSON document), for a test to edit."""
    import json

    from safetensors import safe_open

    from n2v_estimator.models.file_format import FORMAT_NAME

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        document = json.loads(f.metadata()[FORMAT_NAME])
    return tensors, document


def write_model_file(path, tensors, document):
    """Write ``tensors`` and ``document`` (an edited :func:`read_model_file`) as the model file ``path``."""
    import json

    from safetensors.torch import save_file

    from n2v_estimator.models.file_format import FORMAT_NAME

    save_file(tensors, str(path), metadata={FORMAT_NAME: json.dumps(document)})


class CodeRunningPickle:
    """Unpickling this calls ``open(marker, "w")``: a marker file proves that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crash_mid_write(fd, data):
    """Stands in for the model writer's ``_write_all``: writes half the file, then fails as a full disk would."""
    import errno
    import os

    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(params=["float32 CPU", "native bf16 CPU"])
def both_cpu_kinds(request, monkeypatch):
    """The test runs twice: as on a CPU without native bfloat16 and as on one with it (where
    precision="auto" trains in bfloat16): an output that must be exact is exact on both."""
    from n2v_estimator.runtime import compute

    monkeypatch.setattr(compute, "_cpu_has_native_bf16", lambda: request.param == "native bf16 CPU")
    return request.param


@pytest.fixture(autouse=True)
def _settings_said_afresh():
    """What a process says once of the settings it changed (fit/checks.py) is said again in each test."""
    from n2v_estimator.fit import checks

    checks._ALREADY_SAID.clear()
