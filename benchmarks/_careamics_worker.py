"""careamics 0.3.5 side of the n2v_estimator vs careamics speed benchmark.

Run this file with the interpreter of the separate careamics environment (for
example ``/tmp/careamics-venv/bin/python``). It does not import n2v_estimator.
The other half of the benchmark starts it as a subprocess and reads JSON lines
from its stdout.

The fixed work
--------------
Noise2Void on one 2D grey image. The noisy image is
``skimage.data.camera()`` (float64) plus ``default_rng(0).normal(0, 25)``, cast
to float32. The U-Net has ``depth=2`` and ``num_channels_init=32``, with
careamics' other UNet defaults: batch norm on, no residual, no final
activation, independent channels. Training uses batch 16, 64x64 patches, N2V
"uniform" pixel manipulation with roi 11 and masked_pixel_percentage 0.198
(``--perc``), and Adam at a constant lr of 1e-3. It runs on the CPU with
``torch.set_num_threads(1)`` (or, with ``--device cuda``, on the GPU: the model and
each batch moved there as Lightning's trainer moves them, the GPU synchronised
before a timer is read), in float32 (careamics' default precision), without
torch.compile, and with ``num_workers=0`` (patches are drawn in the process,
inside the timed step).

How careamics is set up (once, not timed)
-----------------------------------------
* ``careamics.config.factories.n2v_factory.create_advanced_n2v_config``
  (data_type "array", axes "YX", patch [64, 64], batch 16, default
  augmentations: XYFlip + XYRandomRotate90, "mean_std" normalisation,
  model_params depth=2 / num_channels_init=32, Adam lr 1e-3, fixed seed).
* ``careamics.CAREamist(config)`` builds the ``N2VModule`` (UNet, N2VManipulate
  and n2v_loss) and the Lightning Trainer it uses for prediction.
* ``careamics.lightning.data.CareamicsDataModule(train_data=noisy,
  val_data=noisy)`` with ``.setup("fit")`` is exactly what
  ``CAREamist.train`` builds. It computes careamics' mean/std normalisation
  from the training image and writes it into the configuration, where
  ``CAREamist.predict`` later reads it. The noisy image is also passed as
  ``val_data`` so that careamics does not hold 8 of the 64 patch cells out of
  training (that is what it would do without separate validation data). Our
  side trains on the whole image too.
* The optimizer comes from ``N2VModule.configure_optimizers()``: Adam with
  lr 1e-3. The ReduceLROnPlateau scheduler it also returns is never stepped,
  so the learning rate stays constant.

One timed training step (``CareamicsBench.train``)
--------------------------------------------------
1. ``next()`` on careamics' own training DataLoader
   (``CareamicsDataModule.train_dataloader()``: shuffle=True, num_workers=0,
   ``default_collate``). For each of the 16 samples, ``CareamicsDataset.__getitem__``
   takes a stratified random 64x64 patch, applies mean/std normalisation, then the
   random flip and rot90 augmentations, and wraps the result in
   ``ImageRegionData``. One pass of the loader is 64 patches (4 steps). The
   loader is then restarted, and that restart is timed too.
2. ``N2VModule.training_step(batch, i)``, careamics' code unchanged:
   ``N2VManipulate`` (``uniform_manipulate``, stratified coordinates, torch
   generator), ``UNet`` forward, ``n2v_loss``. The one exception is
   ``log_training_stats``, which is replaced by a no-op because it calls
   ``self.log`` and ``self.optimizers()``, and both need a running Trainer.
3. ``optimizer.zero_grad(set_to_none=True)``, ``loss.backward()``,
   ``optimizer.step()``. Lightning's automatic optimisation does the same.

No Lightning Trainer runs during training. The timed steps therefore leave
out Lightning's per-step overhead (hooks, metric logging, progress bar,
checkpoint callbacks) and the validation epoch that ``trainer.fit`` runs after
every epoch.

Prediction (``CareamicsBench.predict``)
---------------------------------------
This calls the public ``CAREamist.predict(image, tile_size=(T, T),
tile_overlap=(O, O))`` with the in-memory model. careamics asks for
``ckpt_path="last"``, finds no checkpoint, and keeps the current weights (it
warns). The call covers building the prediction DataModule and tiled dataset,
``trainer.predict`` (eval mode, inference_mode, 16 tiles per batch by default,
``N2VModule.predict_step`` with denormalisation), and ``convert_prediction``,
which stitches the tiles. The timer starts after the input array has been
built.

Modes
-----
``serve [--perc P]``
    Reads one JSON command per line on stdin and answers each with exactly one
    JSON line on stdout:
    ``{"cmd": "train", "steps": N}`` -> ``{"seconds": s}``;
    ``{"cmd": "predict", "size": S, "tile": T, "overlap": O}`` ->
    ``{"seconds": s, "megapixels": S*S/1e6}`` (optional ``"batch": B`` sets
    CAREamist.predict's batch_size; without it careamics uses the training
    batch size, 16 tiles per forward pass); ``{"cmd": "quit"}`` ends it.
    Set-up happens once, on the first command, and is not timed. Training and
    prediction share one in-memory model. A failing command is answered with
    ``{"error": "..."}``.
``time-to-quality --target 27.0 --eval-every 25 --max-steps 1500 --perc 0.198``
    Trains from scratch. Every ``eval-every`` steps it predicts the whole
    512x512 noisy image with ``CAREamist.predict``, untiled (output
    denormalised back to the input's units), and prints
    ``{"steps", "train_seconds", "psnr"}``. PSNR is measured against
    ``clean`` with data_range 255. Evaluation time is not in train_seconds.
    The run stops at the first evaluation that reaches the target, or at
    max-steps, and ends with ``{"done": true, "reached": bool}``.
``peak-rss --size 4096 --tile 256 --overlap 48 [--batch B]``
    Untrained model with normalisation from the camera image. Runs one tiled
    prediction of a size x size image and prints ``seconds``, ``peak_rss_mb``
    (ru_maxrss after) and ``baseline_rss_mb`` (ru_maxrss just before the
    prediction).

Stdout carries only the JSON lines. At import, file descriptor 1 is pointed
at stderr for the rest of the process, so careamics and Lightning messages
go to stderr.

Note: careamics 0.3.5 itself defaults to masked_pixel_percentage=0.2
(N2VManipulateConfig and create_*_n2v_config). 0.198 is set explicitly here
to match the other side of the benchmark.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # careamics' statistics progress bar

# Keep the real stdout for our JSON answers only. Everything else, including
# C-level writes from libraries, goes to stderr.
_JSON_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import logging  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

import careamics.lightning.modules.n2v_module as _n2v_module  # noqa: E402
import skimage.data  # noqa: E402
from careamics import CAREamist  # noqa: E402
from careamics.config.factories.n2v_factory import create_advanced_n2v_config  # noqa: E402
from careamics.lightning.data import CareamicsDataModule  # noqa: E402
from careamics.models import get_model_constraints  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio  # noqa: E402

for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "careamics"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# N2VModule.training_step calls log_training_stats(self, ...). That function
# calls self.log() and self.optimizers(), and both need a running Trainer.
# Logging is Lightning bookkeeping rather than N2V work, so it becomes a no-op.
_n2v_module.log_training_stats = lambda *args, **kwargs: None

PATCH = 64
BATCH = 16
DEPTH = 2
FILTERS = 32
LR = 1e-3
DEFAULT_PERC = 0.198
SEED = 42


def _peak_rss_mb():
    """This process's peak resident memory in MB: VmHWM, which starts afresh at exec
    (ru_maxrss can carry the peak of the parent process that started this one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(obj):
    _JSON_OUT.write(json.dumps(obj) + "\n")
    _JSON_OUT.flush()


def camera_pair():
    clean = skimage.data.camera().astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    return clean, noisy.astype(np.float32)


def big_image(noisy, size):
    reps = size // noisy.shape[0] + 1, size // noisy.shape[1] + 1
    return np.ascontiguousarray(np.tile(noisy, reps)[:size, :size], dtype=np.float32)


class CareamicsBench:
    """careamics model, optimizer, masking and patch source for the noisy camera."""

    def __init__(self, perc=DEFAULT_PERC, seed=SEED, device="cpu"):
        self.device = torch.device(device)
        self.clean, self.noisy = camera_pair()
        self.work_dir = tempfile.mkdtemp(prefix="careamics-bench-")
        config = create_advanced_n2v_config(
            experiment_name="bench",
            data_type="array",
            axes="YX",
            patch_size=[PATCH, PATCH],
            batch_size=BATCH,
            masked_pixel_percentage=perc,
            num_workers=0,
            model_params={"depth": DEPTH, "num_channels_init": FILTERS},
            optimizer="Adam",
            optimizer_params={"lr": LR},
            seed=seed,
            trainer_params={
                "accelerator": "gpu" if self.device.type == "cuda" else "cpu",
                "devices": 1,
                "enable_model_summary": False,
                "enable_progress_bar": False,
            },
        )
        self.careamist = CAREamist(config, work_dir=self.work_dir, enable_progress_bar=False)
        self.module = self.careamist.model.to(self.device)
        # the same datamodule CAREamist.train builds, so the normalisation
        # statistics end up in careamist.config.data_config, where predict reads them
        self.datamodule = CareamicsDataModule(
            data_config=self.careamist.config.data_config,
            train_data=self.noisy,
            val_data=self.noisy,
            model_constraints=get_model_constraints(self.careamist.config.algorithm_config.model),
        )
        self.datamodule.setup("fit")
        self.loader = self.datamodule.train_dataloader()
        self._batches = iter(self.loader)
        self.optimizer = self.module.configure_optimizers()["optimizer"]
        self.step_count = 0

    def _next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:  # one epoch = 64 patches; start a new one
            self._batches = iter(self.loader)
            return next(self._batches)

    def synchronise(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def train(self, steps):
        module, optimizer = self.module, self.optimizer
        module.train()
        self.synchronise()
        start = time.perf_counter()
        for _ in range(steps):
            batch = module.transfer_batch_to_device(self._next_batch(), self.device, 0)
            loss = module.training_step(batch, self.step_count)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.step_count += 1
        self.synchronise()
        return time.perf_counter() - start

    def predict(self, image, tile=None, overlap=None, batch_size=None):
        kwargs = {"batch_size": batch_size}  # None: careamics' default (training batch)
        if tile is not None:
            kwargs.update(tile_size=(tile, tile), tile_overlap=(overlap, overlap))
        start = time.perf_counter()
        predictions, _ = self.careamist.predict(image, **kwargs)
        seconds = time.perf_counter() - start
        self.module.train()
        return np.asarray(predictions[0]).reshape(image.shape), seconds

    def close(self):
        shutil.rmtree(self.work_dir, ignore_errors=True)


def serve(args):
    bench = None
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                command = json.loads(line)
                cmd = command.get("cmd")
                if cmd == "quit":
                    break
                if cmd not in ("train", "predict"):
                    raise ValueError(f"unknown command {cmd!r}")
                if bench is None:
                    bench = CareamicsBench(perc=args.perc, seed=args.seed, device=args.device)
                if cmd == "train":
                    emit({"seconds": bench.train(int(command["steps"]))})
                else:
                    size = int(command["size"])
                    image = big_image(bench.noisy, size)
                    batch = command.get("batch")
                    _, seconds = bench.predict(
                        image,
                        int(command["tile"]),
                        int(command["overlap"]),
                        None if batch is None else int(batch),
                    )
                    del image
                    emit({"seconds": seconds, "megapixels": size * size / 1e6})
            except Exception as exc:  # answer every line, never hang the caller
                emit({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if bench is not None:
            bench.close()


def time_to_quality(args):
    bench = CareamicsBench(perc=args.perc, seed=args.seed, device=args.device)
    reached = False
    train_seconds = 0.0
    try:
        while bench.step_count < args.max_steps:
            steps = min(args.eval_every, args.max_steps - bench.step_count)
            train_seconds += bench.train(steps)
            denoised, _ = bench.predict(bench.noisy)  # whole image, untiled
            psnr = peak_signal_noise_ratio(bench.clean, denoised.astype(np.float64), data_range=255)
            emit({"steps": bench.step_count, "train_seconds": train_seconds, "psnr": float(psnr)})
            if psnr >= args.target:
                reached = True
                break
    finally:
        bench.close()
    emit({"done": True, "reached": reached})


def peak_rss(args):
    bench = CareamicsBench(perc=args.perc, seed=args.seed, device=args.device)
    try:
        image = big_image(bench.noisy, args.size)
        baseline = _peak_rss_mb()
        if bench.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _, seconds = bench.predict(image, args.tile, args.overlap, args.batch)
        peak = _peak_rss_mb()
        gpu = torch.cuda.max_memory_allocated() / 2**20 if bench.device.type == "cuda" else None
    finally:
        bench.close()
    emit({"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline, "peak_gpu_mb": gpu})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--perc", type=float, default=DEFAULT_PERC, help="careamics masked_pixel_percentage (percent)")
    common.add_argument("--seed", type=int, default=SEED, help="careamics config seed (must be > 0)")
    common.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    sub.add_parser("serve", parents=[common])
    ttq = sub.add_parser("time-to-quality", parents=[common])
    ttq.add_argument("--target", type=float, default=27.0)
    ttq.add_argument("--eval-every", type=int, default=25)
    ttq.add_argument("--max-steps", type=int, default=1500)
    rss = sub.add_parser("peak-rss", parents=[common])
    rss.add_argument("--size", type=int, default=4096)
    rss.add_argument("--tile", type=int, default=256)
    rss.add_argument("--overlap", type=int, default=48)
    rss.add_argument("--batch", type=int, default=None, help="tiles per prediction batch (default: careamics' own, 16)")
    args = parser.parse_args(argv)
    {"serve": serve, "time-to-quality": time_to_quality, "peak-rss": peak_rss}[args.mode](args)


if __name__ == "__main__":
    main()
