"""The napari plugin at work: open the noisy sample, train from the widget, denoise, and save a
screenshot of the viewer with both widgets docked (noisy and denoised side by side).

    python examples/napari_screenshot.py --out docs/images/napari.png

Needs the [napari] extra and a screen (on a machine without one, run it under ``xvfb-run -a -s "-screen 0 1920x1080x24"``).
"""

from __future__ import annotations

import argparse
import time


def wait(widget, seconds):
    """Let napari's event loop run until the widget's worker is done."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while widget.running:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{type(widget).__name__} still running after {seconds} s")
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="napari.png", help="the screenshot (PNG)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch")
    args = parser.parse_args()

    import napari

    viewer = napari.Viewer(title="n2v-estimator in napari")
    viewer.window.resize(1700, 900)
    viewer.open_sample("n2v-estimator", "noisy_camera")
    _, train = viewer.window.add_plugin_dock_widget("n2v-estimator", "Train Noise2Void")
    _, denoise = viewer.window.add_plugin_dock_widget("n2v-estimator", "Denoise with Noise2Void")
    train.epochs.setValue(args.epochs)
    train.steps.setValue(args.steps)
    train.seed.setValue(0)
    train.start_training()
    wait(train, 3600)
    denoise.refresh_layers()
    denoise.layer.setCurrentText("noisy camera")
    denoise.start_denoising()
    wait(denoise, 600)
    (viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid).enabled = True
    from qtpy.QtWidgets import QApplication

    for _ in range(3):  # let the grid lay out before fitting the view to it
        QApplication.processEvents()
        time.sleep(0.1)
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    print(f"{train.status.text()}; wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
