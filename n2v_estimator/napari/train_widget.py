"""The Train dock widget: Noise2Void trained on one or more image layers with the estimator's settings, the loss
drawn per epoch, a Stop that keeps the best weights; the model saved, or exported to the BioImage Model Zoo.

The model trained last in a viewer is kept for that viewer's Denoise widget (:func:`model_trained_in`).
"""

from __future__ import annotations

import getpass
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from . import layers as layer_rules
from . import session
from .loss_plot import LossPlot
from .worker_widget import WorkerWidget, decimal_box, spin_box

if TYPE_CHECKING:
    from napari.layers import Image
    from napari.qt.threading import FunctionWorker
    from napari.viewer import Viewer
    from qtpy.QtWidgets import QListWidgetItem

    from .._typing import ImagesLike, Params, PathLike
    from ..estimator import Noise2VoidDenoiser
    from ..runtime.progress import Progress

# The model trained last in each viewer, for its denoise widget: keyed by the train widget's viewer (napari gives
# each widget its own proxy of the viewer; proxies of one viewer are equal).
_MODEL_TRAINED_IN_VIEWER: weakref.WeakKeyDictionary[Viewer, Noise2VoidDenoiser] = weakref.WeakKeyDictionary()


def model_trained_in(viewer: Viewer) -> Noise2VoidDenoiser | None:
    """The model the Train widget of ``viewer`` trained last, or ``None``."""
    return _MODEL_TRAINED_IN_VIEWER.get(viewer)


class TrainWidget(WorkerWidget):
    """Train Noise2Void on one or more image layers; save the model or export it to the Model Zoo."""

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__(napari_viewer)
        self.estimator: Noise2VoidDenoiser | None = None
        self._trained_on: Image | None = None
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.layer_list.setMaximumHeight(90)
        self.layer_list.itemSelectionChanged.connect(self._guess_axes)
        self.axes = QLineEdit()
        self.axes.setToolTip("Letters from S (samples, time), C (channels), Z, Y, X in array order")
        self.preset = QComboBox()
        self.preset.addItems(list(session.PRESETS))
        self.struct_axis = QComboBox()
        self.struct_axis.addItems(["x", "y"])
        self.struct_span = spin_box(3, 31, 5, step=2)
        self.noise_model = QComboBox()
        self.noise_model.addItems(["none", "gaussian", "poisson_gaussian"])
        self.epochs = spin_box(0, 10000, 0, special="auto (30 in 2D, 6 in 3D)")
        self.steps = spin_box(1, 100000, 50)
        self.time_limit = decimal_box(0, 10000, 0, decimals=1, special="none")
        self.time_limit.setSuffix(" min")
        self.patch_size = spin_box(8, 1024, 64, step=8)
        self.batch_size = spin_box(1, 1024, 16)
        self.learning_rate = decimal_box(0, 1, 1e-3, step=1e-4, decimals=5)
        self.masked_percentage = decimal_box(0.05, 50, 2.0, step=0.1, decimals=3)
        self.unet_depth = spin_box(1, 6, 2)  # not depth: QWidget.depth() is Qt's
        self.filters = spin_box(4, 512, 32, step=4)
        self.validation_fraction = decimal_box(0, 0.9, 0.1, step=0.05, decimals=2)
        self.seed = spin_box(-1, 2**31 - 1, 0, special="random")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.precision = QComboBox()
        self.precision.addItems(["auto", "32", "bf16", "16-mixed"])
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start_training)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the best weights so far are kept")
        self.stop_button.clicked.connect(self.stop)
        self.plot = LossPlot()
        self.zoo_name = QLineEdit("Noise2Void denoiser")
        self.zoo_description = QLineEdit("Noise2Void (self-supervised) denoiser trained in napari.")
        self.zoo_authors = QLineEdit(getpass.getuser())
        self.save_button = QPushButton("Save model ...")
        self.save_button.clicked.connect(self._ask_save)
        self.export_button = QPushButton("Export to the Model Zoo ...")
        self.export_button.clicked.connect(self._ask_export)
        self._struct_row = QWidget()
        self._lay_out()
        self._set_running(False)
        self.preset.currentTextChanged.connect(self._show_struct)
        self._show_struct(self.preset.currentText())
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("Images", self.layer_list)
        form.addRow("Axes", self.axes)
        form.addRow("Method", self.preset)
        struct = QHBoxLayout()
        struct.addWidget(self.struct_axis)
        struct.addWidget(self.struct_span)
        self._struct_row.setLayout(struct)
        form.addRow("Struct mask (axis, span)", self._struct_row)
        form.addRow("Noise model", self.noise_model)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps per epoch", self.steps)
        form.addRow("Time limit", self.time_limit)
        form.addRow("Patch size", self.patch_size)
        form.addRow("Batch size", self.batch_size)
        advanced = QFormLayout()
        advanced_rows: list[tuple[str, QWidget]] = [
            ("Learning rate", self.learning_rate),
            ("Blind spots (%)", self.masked_percentage),
            ("U-Net depth", self.unet_depth),
            ("First filters", self.filters),
            ("Validation fraction", self.validation_fraction),
            ("Random seed", self.seed),
            ("Device", self.device),
            ("Precision", self.precision),
        ]
        for label, box in advanced_rows:
            advanced.addRow(label, box)
        folded = QCollapsible("Advanced settings")
        inner = QWidget()
        inner.setLayout(advanced)
        folded.addWidget(inner)
        share = QFormLayout()
        share.addRow("Name", self.zoo_name)
        share.addRow("Description", self.zoo_description)
        share.addRow("Authors", self.zoo_authors)
        share.addRow(self.save_button)
        share.addRow(self.export_button)
        shared = QCollapsible("Save and share")
        inner = QWidget()
        inner.setLayout(share)
        shared.addWidget(inner)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        column = QVBoxLayout(self)
        column.addLayout(form)
        column.addWidget(folded)
        column.addLayout(buttons)
        for widget in (self.progress, self.status, self.plot, shared):
            column.addWidget(widget)
        column.addStretch()

    def _show_struct(self, preset: str) -> None:
        self._struct_row.setEnabled(preset == "structN2V")

    def refresh_layers(self, event: object = None) -> None:
        """List the viewer's image layers, keeping the selection."""
        chosen = {item.text() for item in self.layer_list.selectedItems()}
        self.layer_list.clear()
        for layer in layer_rules.image_layers(self.viewer):
            self.layer_list.addItem(layer.name)
            if layer.name in chosen:
                self._last_item().setSelected(True)
        if not chosen and self.layer_list.count():
            self._last_item().setSelected(True)

    def _last_item(self) -> QListWidgetItem:
        item = self.layer_list.item(self.layer_list.count() - 1)
        assert item is not None  # called only when the list holds an item
        return item

    def select_layers(self, names: Sequence[str]) -> None:
        """Choose the layers to train on by name."""
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            if item is not None:
                item.setSelected(item.text() in names)

    def selected_layers(self) -> list[Image]:
        """The image layers chosen to train on, in the list's order."""
        names = [item.text() for item in self.layer_list.selectedItems()]
        return [self.viewer.layers[name] for name in names if name in self.viewer.layers]

    def _guess_axes(self) -> None:
        chosen = self.selected_layers()
        if chosen:
            self.axes.setText(layer_rules.infer_axes(chosen[0]))

    def parameters(self) -> dict[str, Any]:
        """The estimator parameters the widget's settings stand for."""
        params = dict(
            axes=self.axes.text().strip().upper(),
            max_epochs=self.epochs.value() or None,
            steps_per_epoch=self.steps.value(),
            patch_size=self.patch_size.value(),
            batch_size=self.batch_size.value(),
            learning_rate=self.learning_rate.value(),
            masked_pixel_percentage=self.masked_percentage.value(),
            depth=self.unet_depth.value(),
            n_filters=self.filters.value(),
            validation_fraction=self.validation_fraction.value(),
            random_state=None if self.seed.value() < 0 else self.seed.value(),
            device=self.device.currentText(),
            precision=self.precision.currentText(),
            noise_model=None if self.noise_model.currentText() == "none" else self.noise_model.currentText(),
            verbose=False,
        )
        return {
            **params,
            **session.preset_parameters(
                self.preset.currentText(), self.struct_axis.currentText(), self.struct_span.value()
            ),
        }

    def _training_data(self, params: Params) -> tuple[ImagesLike, list[Image]]:
        """What ``fit`` gets (one layer's array, or a list of them) and the layers it came from, checked."""
        chosen = self.selected_layers()
        if not chosen:
            raise layer_rules.LayerError("Choose one or more image layers to train on.")
        for layer in chosen:
            layer_rules.check_image_layer(layer)
            layer_rules.check_axes(layer, params["axes"])
            layer_rules.check_patch_fits(layer, params["axes"], params["patch_size"])
        arrays = [layer_rules.training_array(layer, params["axes"]) for layer in chosen]
        return arrays[0] if len(arrays) == 1 else arrays, chosen

    def start_training(self) -> FunctionWorker | None:
        """Train a new model on the chosen layers in a thread worker; returns the worker (or
        ``None`` after a notification saying what is wrong with the choice)."""
        if self.running:
            return None
        params = self.parameters()
        try:
            data, chosen = self._training_data(params)
        except layer_rules.LayerError as exc:
            show_error(str(exc))
            return None
        self.stopper = session.Stopper(self.time_limit.value() * 60)
        self._trained_on = chosen[0]
        self.plot.clear()
        self.progress.setValue(0)
        self.status.setText(f"training on {', '.join(layer.name for layer in chosen)} ...")
        return self._start(session.fit, params, data, on_done=self._on_trained)

    def _on_progress(self, progress: Progress) -> None:
        super()._on_progress(progress)
        if progress.epoch is not None:
            self.plot.add_epoch(progress.epoch)

    def _on_trained(self, outcome: session.Outcome) -> None:
        if outcome.error is not None:
            self.status.setText("training failed")
            show_error(f"Training failed: {outcome.error}")
            return
        epochs = len(outcome.history)
        if outcome.estimator is None:
            self.status.setText("stopped before the first epoch completed: nothing was trained")
            show_warning("Training stopped before the first epoch completed: no model was kept.")
            return
        self.estimator = outcome.estimator
        _MODEL_TRAINED_IN_VIEWER[self.viewer] = self.estimator
        last = outcome.history[-1]
        summary = f"{epochs} epoch(s), loss {last['train_loss']:.4f}" + (
            f", validation {last['val_loss']:.4f}" if last["val_loss"] is not None else ""
        )
        self.status.setText(("stopped: the best weights are kept; " if outcome.stopped else "trained: ") + summary)
        show_info(
            ("Training stopped; the best weights so far are kept (" if outcome.stopped else "Trained (")
            + summary
            + "). Denoise with the Denoise widget."
        )

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.estimator is not None)
        self.export_button.setEnabled(not running and self.estimator is not None)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "model.safetensors", "Model files (*.safetensors)")
        if path:  # the dialog asked before replacing a file
            self.save_model(path, overwrite=True)

    def save_model(self, path: PathLike, overwrite: bool = False) -> Path | None:
        """Save the trained model (``.safetensors``); an existing file is replaced only with
        ``overwrite`` (the file dialog asks). Returns the path, or ``None`` after a notification."""
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        return self._write(path, overwrite, "save", lambda estimator, target: estimator.save(target, overwrite=True))

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to the Model Zoo", "n2v_model.zip", "Zip (*.zip)")
        if path:
            self.export_model(path, overwrite=True)

    def export_model(self, path: PathLike, layer: Image | None = None, overwrite: bool = False) -> Path | None:
        """Export the trained model as a BioImage Model Zoo package (``.zip``), with ``layer``
        (default: the active image layer, else the first layer trained on) as its test image,
        of which the export reads a central crop."""
        active = self.viewer.layers.selection.active
        layer = layer or (active if layer_rules.is_image_layer(active) else self._trained_on)

        def export(estimator: Noise2VoidDenoiser, target: Path) -> None:
            axes = layer_rules.check_axes(layer, estimator.axes)
            layer_rules.check_model_fits(estimator, layer, axes)
            authors = [name.strip() for name in self.zoo_authors.text().split(",") if name.strip()]
            estimator.export_bioimageio(
                target,
                layer_rules.layer_data(layer),
                name=self.zoo_name.text(),
                description=self.zoo_description.text(),
                authors=authors,
                overwrite=True,
            )  # _write asked

        return self._write(Path(path), overwrite, "export", export)

    def _write(
        self, path: Path, overwrite: bool, verb: str, write: Callable[[Noise2VoidDenoiser, Path], object]
    ) -> Path | None:
        """``write(estimator, path)``, unless there is no model or ``path`` exists (and not ``overwrite``):
        the path, or ``None`` after a notification saying why nothing was written."""
        if self.estimator is None:
            show_error(f"Train a model first: there is nothing to {verb}.")
            return None
        if path.exists() and not overwrite:
            show_error(f"{path} exists: choose another name (nothing was written).")
            return None
        try:
            write(self.estimator, path)
        except Exception as exc:
            show_error(f"Could not {verb} the model: {session.one_line(exc)}")
            return None
        show_info(f"{'Saved' if verb == 'save' else 'Exported'} the model to {path}.")
        return path
