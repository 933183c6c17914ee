"""n2v's BSD68 experiment through this package: train on DCNN400 (sigma 25), validate on its
validation set, report PSNR on the 68 BSD68 test images, as n2v's reproducibility notebook does.

The data are the notebook's (n2v's BSD68_reproducibility_data, not downloaded here; the same images,
with seeded noise, are written in this layout by ``make_n2v_layout.py`` beside the BSD68 and Train400
PNGs of the DnCNN repository); DATA holds

    train/DCNN400_train_gaussian25.npy        (400 noisy 180x180 images)
    val/DCNN400_validation_gaussian25.npy      (the validation images)
    test/bsd68_gaussian25.npy, test/bsd68_groundtruth.npy   (the notebook's own test files: 68 noisy
                                              images and their ground truth, object arrays)
    or test/images/*.npy, test/gt/*.npy       (the same, one file per image, same names)

The notebook's object arrays are read without running pickle's code: only numpy arrays of numbers
are rebuilt from them (an object of any other kind is refused).

    python examples/bsd68.py DATA                      # the notebook's configuration (n2v's N2VConfig)
    python examples/bsd68.py DATA --defaults           # this package's defaults instead
    python examples/bsd68.py DATA --steps 50 --tta     # a short run, and test-time augmentation too
    python examples/bsd68.py DATA --set batch_size=16 n_filters=32   # any estimator parameter
    python examples/bsd68.py DATA --defaults --max-time 300 --set "noise_model='gaussian'"   # 5 minutes of training

The paper reports 27.71 dB, the notebook 27.81 (27.88 with TTA), for 200 epochs of 400 steps of
batch 128 (80,000 steps: hours on a GPU). PSNR is the notebook's: 255 as the peak, per image.
"""

from __future__ import annotations

import argparse
import ast
import json
import pickle
import time
from pathlib import Path

import numpy as np

from n2v_estimator import Noise2VoidDenoiser

# n2v's BSD68 notebook (examples/2D/denoising2D_BSD68) configures N2VConfig with these.
NOTEBOOK_CONFIG = dict(
    n_dim=2,
    axes="YXC",
    n_channel_in=1,
    n_channel_out=1,
    means=["0"],
    stds=["1"],
    unet_kern_size=3,
    train_steps_per_epoch=400,
    train_epochs=200,
    train_loss="mse",
    batch_norm=True,
    train_batch_size=128,
    n2v_perc_pix=0.198,
    n2v_patch_shape=(64, 64),
    unet_n_first=96,
    unet_residual=True,
    n2v_manipulator="uniform_withCP",
    n2v_neighborhood_radius=2,
    single_net_per_channel=False,
    unet_n_depth=2,
    train_learning_rate=0.0004,
    unet_last_activation="linear",
)


def psnr(gt, image):
    """The notebook's PSNR: 255 as the peak."""
    mse = np.mean(np.square(np.asarray(gt, np.float64) - np.asarray(image, np.float64)))
    return 20 * np.log10(255) - 10 * np.log10(mse)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays of numbers and nothing else: the notebook's object arrays hold images,
    and pickle would run whatever a crafted file names."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array: refused")
        return super().find_class(module, name)


def load_images(path):
    """The images of the ``.npy`` file ``path``: an array of numbers, or a 1D object array of them
    (the notebook's test files), read with :class:`_ArraysOnly`, never ``allow_pickle=True``."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise ValueError(f"{path}: .npy format version {version} is not read here")
        shape, _, dtype = header[version](file)
        if dtype.kind != "O":
            return np.load(path)
        items = _ArraysOnly(file).load()
    if (
        not isinstance(items, np.ndarray)
        or items.shape != shape
        or not all(isinstance(x, np.ndarray) and x.dtype.kind in "iuf" for x in items.ravel())
    ):
        raise ValueError(f"{path}: an object array of number arrays was expected")
    return [np.asarray(x, dtype=np.float32) for x in items.ravel()]


def read_data(folder):
    """Training and validation stacks, and the test pairs ``(name, noisy, gt)``: from the notebook's
    two object arrays, else from test/images/ and test/gt/ matched by file name."""
    folder = Path(folder)
    train = np.load(folder / "train" / "DCNN400_train_gaussian25.npy")
    validation = np.load(folder / "val" / "DCNN400_validation_gaussian25.npy")
    noisy, truth = folder / "test" / "bsd68_gaussian25.npy", folder / "test" / "bsd68_groundtruth.npy"
    if noisy.is_file() and truth.is_file():
        noisy, truth = load_images(noisy), load_images(truth)
        if len(noisy) != len(truth) or any(x.shape != g.shape for x, g in zip(noisy, truth)):
            raise ValueError(f"{folder / 'test'}: the noisy images and the ground truth do not pair up")
        return train, validation, [(f"{i:03d}", x, g) for i, (x, g) in enumerate(zip(noisy, truth))]
    images = sorted((folder / "test" / "images").glob("*.npy"))
    if not images:
        raise FileNotFoundError(
            f"no test images in {folder / 'test'} (bsd68_gaussian25.npy and "
            "bsd68_groundtruth.npy, or images/*.npy and gt/*.npy)"
        )
    pairs = [(p.stem, np.load(p), np.load(folder / "test" / "gt" / p.name)) for p in images]
    return train, validation, pairs


def make_denoiser(defaults, steps, extra):
    """The notebook's configuration through ``from_n2v_config`` (or this package's defaults),
    shortened to ``steps`` optimizer steps when given, with ``extra`` parameters on top."""
    if defaults:
        denoiser = Noise2VoidDenoiser(axes="SYX")
    else:
        denoiser = Noise2VoidDenoiser.from_n2v_config(NOTEBOOK_CONFIG).set_params(axes="SYX")
    if steps:
        per_epoch = min(steps, denoiser.steps_per_epoch)
        denoiser.set_params(steps_per_epoch=per_epoch, max_epochs=max(1, steps // per_epoch))
    return denoiser.set_params(**extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the folder holding train/, val/ and test/")
    parser.add_argument("--defaults", action="store_true", help="this package's defaults, not the notebook's config")
    parser.add_argument("--steps", type=int, default=None, help="train this many optimizer steps (a short run)")
    parser.add_argument("--max-time", type=float, default=None, help="train for this many seconds (max_time)")
    parser.add_argument("--tta", action="store_true", help="also report PSNR with test-time augmentation")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="NAME=VALUE", help="estimator parameters (Python literals)"
    )
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args()

    train, validation, pairs = read_data(args.data)
    extra = {name: ast.literal_eval(value) for name, value in (item.split("=", 1) for item in args.set)}
    timed = {"max_time": args.max_time, "max_epochs": None} if args.max_time is not None else {}
    denoiser = make_denoiser(args.defaults, args.steps, {"random_state": args.random_state, **timed, **extra})
    # The validation images last: fit holds out the last round(fraction * S) whole images.
    stack = np.concatenate([train, validation]).astype(np.float32)
    denoiser.set_params(validation_fraction=len(validation) / len(stack))
    start = time.perf_counter()
    denoiser.fit(stack)
    seconds = time.perf_counter() - start
    denoiser.set_params(axes="YX")
    results = {}
    for name, noisy, gt in pairs:
        results[name] = [psnr(gt, denoiser.set_params(tta=False).transform(noisy))]
        if args.tta:
            results[name].append(psnr(gt, denoiser.set_params(tta=True).transform(noisy)))
        print(f"{name}: {results[name][0]:.2f} dB" + (f" (TTA {results[name][1]:.2f})" if args.tta else ""))
    mean = np.mean([r[0] for r in results.values()])
    summary = {
        "images": len(results),
        "psnr": round(float(mean), 2),
        "steps": sum(record["steps"] for record in denoiser.history_),
        "settings": {k: v for k, v in extra.items()},
        "fit_seconds": round(seconds, 1),
        "configuration": "defaults" if args.defaults else "n2v notebook",
    }
    if args.tta:
        summary["psnr_tta"] = round(float(np.mean([r[1] for r in results.values()])), 2)
    print(f"PSNR over {len(results)} test images: {mean:.2f} dB")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
