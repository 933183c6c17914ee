"""Make the n2v model folders and n2v's own predictions that tests/test_n2v_import.py checks against.

Run with the real TensorFlow n2v, in a virtual environment of its own (it needs TensorFlow <= 2.15):

    python -m venv /tmp/venv-n2v
    /tmp/venv-n2v/bin/pip install "tensorflow==2.15.1" "n2v==0.3.3" "numpy<2" h5py
    /tmp/venv-n2v/bin/python tests/data/n2v_models/make_fixtures.py

Each model is small (8 first filters) and trained a few steps on a synthetic image, so that its
batch-norm statistics and weights are not the initial ones; each test image is larger than twice
the network's reach, so that n2v's and this package's predictions can be compared away from the
edges (where n2v's convolutions see zeros and this package a mirrored halo). Beside n2v's own folder (config.json,
weights_best.h5, weights_last.h5) each case holds ``input.npy`` and n2v's ``predict`` of it, whole
(``prediction.npy``) and in tiles (``prediction_tiled.npy``, the ``n_tiles`` in ``cases.json``).
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from n2v.models import N2V, N2VConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
SMALL = dict(unet_n_first=8, unet_n_depth=2, train_batch_size=4, train_epochs=2, train_steps_per_epoch=5,
             train_tensorboard=False, n2v_perc_pix=1.6)

CASES = {
    # n2v's defaults: kernel 5, batch norm, no residual, one network per channel.
    "n2v_2d": dict(axes="YX", shape=(160, 150), config=dict(n2v_patch_shape=(32, 32)), n_tiles=(2, 2)),
    # N2V2: blur-pool, no top skip, median replacement.
    "n2v2_2d": dict(axes="YX", shape=(120, 110), n_tiles=(2, 2),
                    config=dict(n2v_patch_shape=(32, 32), unet_kern_size=3, blurpool=True, skip_skipone=True,
                                n2v_manipulator="median")),
    "n2v_3d": dict(axes="ZYX", shape=(32, 48, 44), n_tiles=(1, 2, 2),
                   config=dict(n2v_patch_shape=(16, 32, 32), unet_kern_size=3, unet_n_depth=1)),
    # Three channels, one joint network.
    "joint_3channel": dict(axes="YXC", shape=(120, 110, 3), n_tiles=(2, 2, 1),
                           config=dict(n2v_patch_shape=(32, 32), unet_kern_size=3, single_net_per_channel=False)),
    # The BSD68 notebook's configuration at a small size: residual, batch norm, mse, 0.198 % blind spots.
    "bsd68_small": dict(axes="YX", shape=(120, 110), n_tiles=(2, 2),
                        config=dict(unet_kern_size=3, train_loss="mse", batch_norm=True, n2v_perc_pix=0.198,
                                    n2v_patch_shape=(64, 64), unet_residual=True, n2v_manipulator="uniform_withCP",
                                    n2v_neighborhood_radius=2, single_net_per_channel=False)),
    # Two channels, one network each (n2v's default for several channels).
    "per_channel_2channel": dict(axes="YXC", shape=(120, 110, 2), n_tiles=(2, 2, 1),
                                 config=dict(n2v_patch_shape=(32, 32), unet_kern_size=3)),
}


def synthetic(shape, axes, seed):
    """A smooth image with Gaussian noise; channels (a last axis C) differ in brightness."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[:-1] if axes.endswith("C") else shape)
    base = 100 + 60 * np.sin(grid.sum(axis=0) / 6.0) * np.cos(grid[-1] / 9.0)
    if axes.endswith("C"):
        base = np.stack([base * (1 + 0.3 * c) + 20 * c for c in range(shape[-1])], axis=-1)
    return (base + rng.normal(0, 20, base.shape)).astype(np.float32)


def main():
    tf.keras.utils.set_random_seed(0)
    summary = {}
    for name, case in CASES.items():
        image = synthetic(case["shape"], case["axes"], seed=1)
        train = image if "C" in case["axes"] else image[..., None]
        train = train[None]  # S...C
        patch = case["config"]["n2v_patch_shape"]
        crop = tuple(slice(0, (s // p) * p) for s, p in zip(train.shape[1:-1], patch))
        patches = train[(slice(None), *crop, slice(None))]
        config = N2VConfig(patches, **{**SMALL, **case["config"]})
        folder = HERE / name
        shutil.rmtree(folder, ignore_errors=True)
        model = N2V(config, name, basedir=str(HERE))
        model.train(patches, patches)
        test = synthetic(case["shape"], case["axes"], seed=2)
        np.save(folder / "input.npy", test)
        np.save(folder / "prediction.npy", model.predict(test, axes=case["axes"]).astype(np.float32))
        np.save(folder / "prediction_tiled.npy",
                model.predict(test, axes=case["axes"], n_tiles=case["n_tiles"]).astype(np.float32))
        for leftover in ("logs", "weights_now.h5"):
            target = folder / leftover
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        summary[name] = {"axes": case["axes"], "n_tiles": list(case["n_tiles"])}
    (HERE / "cases.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {len(summary)} cases with TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
