"""Share a trained denoiser through the BioImage Model Zoo, and check it with the zoo's own runtime.

After the README's set-up command (which writes ``results/camera/model.safetensors``)::

    pip install -e ".[bioimageio]"
    python examples/export_bioimageio.py --model results/camera/model.safetensors --out results/camera/model.zip

writes the package, runs ``bioimageio.core``'s model test on both weight formats, predicts a new image
(a noisy crop of scikit-image's ``coins``) with the zoo's runtime, whole and in its own tiles, compares
that with ``transform`` and reads the package back with ``from_bioimageio``. Everything runs offline.
"""

from __future__ import annotations

import argparse

import numpy as np
from skimage import data

from n2v_estimator import Noise2VoidDenoiser


def noisy(image, seed):
    image = np.asarray(image, np.float64)
    return (image + np.random.default_rng(seed).normal(0, 25, image.shape)).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model written by save() (a grayscale 2D model)")
    parser.add_argument("--out", required=True, help="the package to write (.zip)")
    args = parser.parse_args(argv)

    from bioimageio.core import create_prediction_pipeline, load_description, predict
    from bioimageio.core import test_model as zoo_model_test
    from bioimageio.spec.model.v0_5 import TensorId

    denoiser = Noise2VoidDenoiser.load(args.model, device="cpu").set_params(verbose=False)
    package = denoiser.export_bioimageio(
        args.out,
        noisy(data.camera(), 0),
        name="Noise2Void demo on camera",
        description="Denoises grayscale photographs with Gaussian noise of sigma 25 (a demo).",
        authors=["n2v-estimator developers"],
        overwrite=True,  # the demo's own package: a rerun replaces it
    )
    print(f"wrote {package} ({package.stat().st_size / 1e6:.1f} MB)")
    for weight_format in ("pytorch_state_dict", "torchscript"):
        print(
            f"bioimageio.core test_model ({weight_format}): {zoo_model_test(str(package), weight_format=weight_format).status}"
        )

    step = 2**denoiser.depth
    new = noisy(data.coins(), 1)
    new = new[: new.shape[0] // step * step, : new.shape[1] // step * step]  # the runtime wants multiples of the step
    ours = denoiser.set_params(precision="32").transform(new)  # the runtime computes in float32
    pipeline = create_prediction_pipeline(load_description(str(package)), weight_format="pytorch_state_dict")
    for blocksize, what in ((None, "whole image"), (4, "the runtime's tiles")):
        sample = predict(model=pipeline, inputs={"raw": new[None, None]}, blocksize_parameter=blocksize)
        theirs = sample.members[TensorId("denoised")].data.values[0, 0]
        difference = np.abs(theirs - ours).max() / np.ptp(ours)
        print(
            f"zoo prediction of a new {new.shape} image ({what}) vs transform: max |diff| = {difference:.1e} of the range"
        )
    again = Noise2VoidDenoiser.from_bioimageio(package).set_params(verbose=False, precision="32")
    print(f"from_bioimageio: transform identical = {np.array_equal(again.transform(new), ours)}")


if __name__ == "__main__":
    main()
