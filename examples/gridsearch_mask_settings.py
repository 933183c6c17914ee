"""Choose Noise2Void mask settings without clean images.

Six 128x128 crops of images shipped with scikit-image get Gaussian noise
(sigma 25, seed 0). ``GridSearchCV`` cross-validates six mask settings over the
stack (folds along the sample axis S) and picks the best one by the denoiser's
self-supervised ``score`` (the J-invariant / Noise2Self loss, which needs no
clean image). The clean crops are used only afterwards, to check that the
self-supervised ranking agrees with the ranking by true PSNR.

    python examples/gridsearch_mask_settings.py [--steps 150] [--n-jobs 2]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr
from skimage import color, data
from sklearn.model_selection import GridSearchCV, KFold

from n2v_estimator import Noise2VoidDenoiser

GRID = {
    "masked_pixel_percentage": [0.2, 2.0, 10.0],
    "manipulator": ["uniform_withCP", "median"],
}


def noisy_stack(sigma=25.0, seed=0):
    """Six clean 128x128 crops (float64, 0..255) and a noisy copy of each."""
    astronaut = color.rgb2gray(data.astronaut()) * 255
    crops = [
        data.camera()[200:328, 200:328],
        data.camera()[300:428, 50:178],
        data.coins()[100:228, 100:228],
        data.moon()[200:328, 200:328],
        astronaut[50:178, 150:278],
        data.grass()[0:128, 0:128],
    ]
    clean = np.stack([np.asarray(c, dtype=np.float64) for c in crops])
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)
    return clean, noisy


def psnr_from_mse(mse, data_range=255.0):
    return 10 * np.log10(data_range**2 / np.asarray(mse))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per fit")
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args()

    clean, noisy = noisy_stack()
    denoiser = Noise2VoidDenoiser(
        patch_size=32,
        batch_size=16,
        n_filters=16,
        max_epochs=3,
        steps_per_epoch=max(1, args.steps // 3),
        learning_rate=2e-3,
        random_state=0,
    )
    # Both scores come from the same fits: the self-supervised one picks the
    # setting (refit), the one against the clean crops only checks the choice.
    search = GridSearchCV(
        denoiser,
        GRID,
        cv=KFold(3),
        scoring={
            "self_supervised": lambda est, X, y: est.score(X),
            "true": lambda est, X, y: est.score(X, y),
        },
        refit="self_supervised",
        n_jobs=args.n_jobs,
    )
    search.fit(noisy, clean)

    results = search.cv_results_
    self_supervised = results["mean_test_self_supervised"]
    true_psnr = psnr_from_mse(-results["mean_test_true"])
    order = np.argsort(-self_supervised)
    print(f"{'rank':>4}  {'masked %':>8}  {'manipulator':<15} {'self-sup. score':>15}  {'true PSNR (dB)':>14}")
    for rank, i in enumerate(order, 1):
        p = results["params"][i]
        print(
            f"{rank:>4}  {p['masked_pixel_percentage']:>8}  {p['manipulator']:<15} "
            f"{self_supervised[i]:>15.2f}  {true_psnr[i]:>14.2f}"
        )
    chosen = true_psnr[search.best_index_]
    rho = spearmanr(self_supervised, true_psnr).statistic
    print(f"chosen by the self-supervised score: {search.best_params_} -> true PSNR {chosen:.2f} dB")
    print(f"best candidate by true PSNR: {true_psnr.max():.2f} dB (gap {true_psnr.max() - chosen:.2f} dB)")
    print(f"Spearman correlation, self-supervised score vs true PSNR: {rho:.3f}")


if __name__ == "__main__":
    main()
