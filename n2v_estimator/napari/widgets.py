"""The plugin's dock widgets: train on image layers, denoise a layer, save and share the model.

Work runs in napari thread workers (the viewer stays responsive); progress reaches the
widgets through a Qt signal, queued to the main thread. Every failure becomes a napari
notification carrying the estimator's message, never a traceback dialog.
"""

from __future__ import annotations

import getpass
import weakref
from functools import partial
from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from . import layers as layer_rules
from . import session

# The model trained last in each viewer, for its denoise widget: keyed by the train widget's
# viewer (napari gives each widget its own proxy of the viewer; proxies of one viewer are equal).
_TRAINED = weakref.WeakKeyDictionary()


class _Relay(QObject):
    """Carries progress from a worker thread to the widget, queued to the main thread."""

    progress = Signal(object)


def _image_layers(viewer):
    return [layer for layer in viewer.layers if layer_rules.is_image_layer(layer)]


def _spin(minimum, maximum, value, step=1, decimals=None, special=None):
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


class LossPlot(QWidget):
    """Training and validation loss per epoch, drawn as two lines (no plotting library)."""

    COLOURS = {"train": QColor(80, 160, 255), "validation": QColor(255, 150, 60)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.curves = {"train": [], "validation": []}

    def clear(self):
        self.curves = {"train": [], "validation": []}
        self.update()

    def add_epoch(self, record):
        self.curves["train"].append(float(record["train_loss"]))
        if record.get("val_loss") is not None:
            self.curves["validation"].append(float(record["val_loss"]))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        values = [v for curve in self.curves.values() for v in curve]
        margin, width, height = 8, self.width() - 16, self.height() - 28
        painter.setPen(QColor(200, 200, 200))
        if not values:
            painter.drawText(margin, 18, "loss per epoch (train, validation)")
            return
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        count = max(len(curve) for curve in self.curves.values())
        for name, curve in self.curves.items():
            painter.setPen(QPen(self.COLOURS[name], 2))
            points = [
                (margin + (i / max(1, count - 1)) * width, 20 + (1 - (v - low) / span) * height)
                for i, v in enumerate(curve)
            ]
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                painter.drawLine(int(x0), int(y0), int(x1), int(y1))
            if len(points) == 1:
                painter.drawEllipse(int(points[0][0]) - 2, int(points[0][1]) - 2, 4, 4)
        painter.setPen(QColor(200, 200, 200))
        last = self.curves["validation"][-1:] or self.curves["train"][-1:]
        painter.drawText(
            margin,
            14,
            f"epoch {count}: loss {self.curves['train'][-1]:.4f}, validation {last[0]:.4f}"
            if self.curves["validation"]
            else f"epoch {count}: loss {self.curves['train'][-1]:.4f}",
        )


class _Worked(QWidget):
    """What both widgets share: a viewer, a worker with a stopper, a progress bar fed by the relay."""

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.stopper = None
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)

    @property
    def running(self):
        return self.worker is not None

    def _start(self, function, *args, on_done, **kwargs):
        self.worker = create_worker(
            function, *args, on_progress=self._relay.progress.emit, stopper=self.stopper, _start_thread=False, **kwargs
        )
        self.worker.returned.connect(on_done)
        self.worker.errored.connect(self._on_crash)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.worker.start()
        return self.worker

    def _on_progress(self, progress):
        if progress.total:
            self.progress.setMaximum(progress.total)
        self.progress.setValue(progress.done)

    def _on_crash(self, exc):  # session functions catch their errors; this is for the unforeseen
        show_error(f"{type(exc).__name__}: {exc}")

    def _on_finished(self):
        self.worker = None
        self._set_running(False)

    def stop(self):
        """Ask the running work to stop at its next step (training keeps the best weights)."""
        if self.stopper is not None:
            self.stopper.stop()
            self.status.setText("stopping after the current step ...")

    def _set_running(self, running):
        raise NotImplementedError


class TrainWidget(_Worked):
    """Train Noise2Void on one or more image layers; save the model or export it to the Model Zoo."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.estimator = None
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.layer_list.setMaximumHeight(90)
        self.layer_list.itemSelectionChanged.connect(self._guess_axes)
        self.axes = QLineEdit()
        self.axes.setToolTip("Letters from S (samples, time), C (channels), Z, Y, X in array order")
        self.preset = QComboBox()
        self.preset.addItems(list(session.PRESETS))
        self.struct_axis = QComboBox()
        self.struct_axis.addItems(["x", "y"])
        self.struct_span = _spin(3, 31, 5, step=2)
        self.noise_model = QComboBox()
        self.noise_model.addItems(["none", "gaussian", "poisson_gaussian"])
        self.epochs = _spin(0, 10000, 0, special="auto (30 in 2D, 6 in 3D)")
        self.steps = _spin(1, 100000, 50)
        self.time_limit = _spin(0, 10000, 0, special="none", decimals=1)
        self.time_limit.setSuffix(" min")
        self.patch_size = _spin(8, 1024, 64, step=8)
        self.batch_size = _spin(1, 1024, 16)
        self.learning_rate = _spin(0, 1, 1e-3, step=1e-4, decimals=5)
        self.masked = _spin(0.05, 50, 2.0, step=0.1, decimals=3)
        self.depth = _spin(1, 6, 2)
        self.filters = _spin(4, 512, 32, step=4)
        self.validation = _spin(0, 0.9, 0.1, step=0.05, decimals=2)
        self.seed = _spin(-1, 2**31 - 1, 0, special="random")
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
        self._lay_out()
        self._set_running(False)
        self.preset.currentTextChanged.connect(self._show_struct)
        self._show_struct(self.preset.currentText())
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    def _lay_out(self):
        form = QFormLayout()
        form.addRow("Images", self.layer_list)
        form.addRow("Axes", self.axes)
        form.addRow("Method", self.preset)
        struct = QHBoxLayout()
        struct.addWidget(self.struct_axis)
        struct.addWidget(self.struct_span)
        self._struct_row = QWidget()
        self._struct_row.setLayout(struct)
        form.addRow("Struct mask (axis, span)", self._struct_row)
        form.addRow("Noise model", self.noise_model)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps per epoch", self.steps)
        form.addRow("Time limit", self.time_limit)
        form.addRow("Patch size", self.patch_size)
        form.addRow("Batch size", self.batch_size)
        advanced = QFormLayout()
        for label, box in [
            ("Learning rate", self.learning_rate),
            ("Blind spots (%)", self.masked),
            ("U-Net depth", self.depth),
            ("First filters", self.filters),
            ("Validation fraction", self.validation),
            ("Random seed", self.seed),
            ("Device", self.device),
            ("Precision", self.precision),
        ]:
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
        for part in (form, folded, buttons, self.progress, self.status, self.plot, shared):
            column.addLayout(part) if isinstance(part, (QFormLayout, QHBoxLayout)) else column.addWidget(part)
        column.addStretch()

    def _show_struct(self, preset):
        self._struct_row.setEnabled(preset == "structN2V")

    def refresh_layers(self, event=None):
        """List the viewer's image layers, keeping the selection."""
        chosen = {item.text() for item in self.layer_list.selectedItems()}
        self.layer_list.clear()
        for layer in _image_layers(self.viewer):
            self.layer_list.addItem(layer.name)
            if layer.name in chosen:
                self.layer_list.item(self.layer_list.count() - 1).setSelected(True)
        if not chosen and self.layer_list.count():
            self.layer_list.item(self.layer_list.count() - 1).setSelected(True)

    def select_layers(self, names):
        """Choose the layers to train on by name."""
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setSelected(item.text() in names)

    def selected_layers(self):
        names = [item.text() for item in self.layer_list.selectedItems()]
        return [self.viewer.layers[name] for name in names if name in self.viewer.layers]

    def _guess_axes(self):
        chosen = self.selected_layers()
        if chosen:
            self.axes.setText(layer_rules.infer_axes(chosen[0]))

    def parameters(self):
        """The estimator parameters the widget's settings stand for."""
        params = dict(
            axes=self.axes.text().strip().upper(),
            max_epochs=self.epochs.value() or None,
            steps_per_epoch=self.steps.value(),
            patch_size=self.patch_size.value(),
            batch_size=self.batch_size.value(),
            learning_rate=self.learning_rate.value(),
            masked_pixel_percentage=self.masked.value(),
            depth=self.depth.value(),
            n_filters=self.filters.value(),
            validation_fraction=self.validation.value(),
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

    def _training_data(self, params):
        chosen = self.selected_layers()
        if not chosen:
            raise layer_rules.LayerError("Choose one or more image layers to train on.")
        for layer in chosen:
            layer_rules.check_image_layer(layer)
            layer_rules.check_axes(layer, params["axes"])
            layer_rules.check_patch_fits(layer, params["axes"], params["patch_size"])
        arrays = [layer_rules.training_array(layer, params["axes"]) for layer in chosen]
        return arrays[0] if len(arrays) == 1 else arrays, chosen

    def start_training(self):
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

    def _on_progress(self, progress):
        super()._on_progress(progress)
        if progress.epoch is not None:
            self.plot.add_epoch(progress.epoch)

    def _on_trained(self, outcome):
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
        _TRAINED[self.viewer] = self.estimator
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

    def _set_running(self, running):
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.estimator is not None)
        self.export_button.setEnabled(not running and self.estimator is not None)

    def _ask_save(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "model.safetensors", "Model files (*.safetensors)")
        if path:  # the dialog asked before replacing a file
            self.save_model(path, overwrite=True)

    def save_model(self, path, overwrite=False):
        """Save the trained model (``.safetensors``); an existing file is replaced only with
        ``overwrite`` (the file dialog asks). Returns the path, or ``None`` after a notification."""
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        return self._write(path, overwrite, "save", self.estimator and partial(self.estimator.save, overwrite=True))

    def _ask_export(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export to the Model Zoo", "n2v_model.zip", "Zip (*.zip)")
        if path:
            self.export_model(path, overwrite=True)

    def export_model(self, path, layer=None, overwrite=False):
        """Export the trained model as a BioImage Model Zoo package (``.zip``), with ``layer``
        (default: the active image layer, else the first layer trained on) as its test image,
        of which the export reads a central crop."""
        active = self.viewer.layers.selection.active
        layer = layer or (active if layer_rules.is_image_layer(active) else getattr(self, "_trained_on", None))

        def export(path):
            axes = layer_rules.check_axes(layer, self.estimator.axes)
            layer_rules.check_model_fits(self.estimator, layer, axes)
            authors = [name.strip() for name in self.zoo_authors.text().split(",") if name.strip()]
            self.estimator.export_bioimageio(
                path,
                layer_rules.layer_data(layer),
                name=self.zoo_name.text(),
                description=self.zoo_description.text(),
                authors=authors,
                overwrite=True,
            )  # _write asked

        return self._write(Path(path), overwrite, "export", self.estimator and export)

    def _write(self, path, overwrite, verb, write):
        """``write(path)``, unless there is no model or ``path`` exists (and not ``overwrite``):
        the path, or ``None`` after a notification saying why nothing was written."""
        if self.estimator is None:
            show_error(f"Train a model first: there is nothing to {verb}.")
            return None
        if path.exists() and not overwrite:
            show_error(f"{path} exists: choose another name (nothing was written).")
            return None
        try:
            write(path)
        except Exception as exc:
            show_error(f"Could not {verb} the model: {session.one_line(exc)}")
            return None
        show_info(f"{'Saved' if verb == 'save' else 'Exported'} the model to {path}.")
        return path


class DenoiseWidget(_Worked):
    """Denoise an image layer with the model trained in this viewer or a model file."""

    SOURCES = ("trained in this viewer", "model file")

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.loaded = None
        self.source = QComboBox()
        self.source.addItems(list(self.SOURCES))
        self.path = QLineEdit()
        self.path.setPlaceholderText(".safetensors, a folder holding one, or a Model Zoo .zip of this package")
        self.browse = QPushButton("Open ...")
        self.browse.clicked.connect(self._ask_model)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.layer = QComboBox()
        self.layer.currentTextChanged.connect(self._guess_axes)
        self.axes = QLineEdit()
        self.tile_size = _spin(0, 4096, 0, step=32, special="auto")
        self.tta = QCheckBox("Test-time augmentation (8x the work)")
        self.precision = QComboBox()
        self.precision.addItems(["auto", "32", "bf16", "16-mixed"])
        self.denoise_button = QPushButton("Denoise")
        self.denoise_button.clicked.connect(self.start_denoising)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.stop)
        form = QFormLayout()
        form.addRow("Model", self.source)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(self.browse)
        form.addRow("Model file", row)
        form.addRow(self.model_info)
        form.addRow("Image", self.layer)
        form.addRow("Axes", self.axes)
        form.addRow("Tile size", self.tile_size)
        form.addRow(self.tta)
        form.addRow("Precision", self.precision)
        buttons = QHBoxLayout()
        buttons.addWidget(self.denoise_button)
        buttons.addWidget(self.cancel_button)
        column = QVBoxLayout(self)
        column.addLayout(form)
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.status)
        column.addStretch()
        self._set_running(False)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    def refresh_layers(self, event=None):
        current = self.layer.currentText()
        self.layer.blockSignals(True)
        self.layer.clear()
        names = [layer.name for layer in _image_layers(self.viewer)]
        self.layer.addItems(names)
        self.layer.blockSignals(False)
        if current in names:
            self.layer.setCurrentText(current)
        elif names:
            self.layer.setCurrentIndex(len(names) - 1)
        self._guess_axes()

    def _ask_model(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open a model", "", "Models (*.safetensors *.zip)")
        if path:
            self.load_model(path)

    def load_model(self, path):
        """Read a model file or Model Zoo package (after its safety checks); the file is only read."""
        self.path.setText(str(path))
        self.source.setCurrentText("model file")
        try:
            self.loaded = session.load_model(path)
        except ValueError as exc:
            self.loaded = None
            self.model_info.setText("")
            show_error(f"Could not read the model: {exc}")
            return None
        est = self.loaded
        self.model_info.setText(
            f"{est.spatial_ndim_}D, {est.n_channels_} channel(s), axes {est.axes or 'inferred'}, "
            f"{len(getattr(est, 'history_', []))} epoch(s)"
            + (f", noise model {est.noise_model}" if est.noise_model is not None else "")
        )
        self._guess_axes()
        return est

    def model(self):
        """The chosen model: the one trained in this viewer, or the file read."""
        if self.source.currentText() == "model file":
            return self.loaded
        return _TRAINED.get(self.viewer)

    def _guess_axes(self, *args):
        if self.layer.currentText() not in self.viewer.layers:
            return
        axes = layer_rules.infer_axes(self.viewer.layers[self.layer.currentText()])
        model = self.model()
        if model is not None and model.spatial_ndim_ == 2 and "Z" in axes and not {"S", "T"} & set(axes):
            axes = axes.replace("Z", "S")  # a 2D model denoises a stack plane by plane
        self.axes.setText(axes)

    def start_denoising(self):
        """Denoise the chosen layer in a thread worker; the result is added as a new layer."""
        if self.running:
            return None
        estimator = self.model()
        if estimator is None:
            show_error(
                "No model: train one with the Train widget, or open a model file."
                if self.source.currentIndex() == 0
                else "No model file read: open a .safetensors file or a Model Zoo .zip."
            )
            return None
        name = self.layer.currentText()
        if name not in self.viewer.layers:
            show_error("Choose an image layer to denoise.")
            return None
        layer = self.viewer.layers[name]
        try:
            layer_rules.check_image_layer(layer)
            axes = layer_rules.check_axes(layer, self.axes.text())
            layer_rules.check_model_fits(estimator, layer, axes)
        except layer_rules.LayerError as exc:
            show_error(str(exc))
            return None
        settings = {
            "tta": self.tta.isChecked(),
            "precision": self.precision.currentText(),
            "tile_size": self.tile_size.value() or None,
            "dtype": "input" if getattr(layer, "rgb", False) else "float",
        }
        self.stopper = session.Stopper()
        self._input = layer
        self.progress.setValue(0)
        self.status.setText(f"denoising {name} ...")
        return self._start(
            session.denoise,
            estimator,
            layer_rules.layer_data(layer),
            axes=axes,
            settings=settings,
            on_done=self._on_denoised,
        )

    def _on_denoised(self, outcome):
        if outcome.error is not None:
            self.status.setText("failed")
            show_error(f"Denoising failed: {outcome.error}")
            return
        if outcome.stopped:
            self.status.setText("cancelled: no layer was added")
            return
        denoised, std = outcome.result if isinstance(outcome.result, tuple) else (outcome.result, None)
        for data, kwargs, _ in layer_rules.result_layers(self._input, denoised, std):
            self.viewer.add_image(data, **kwargs)
        self.status.setText(f"added {self._input.name} denoised")

    def _set_running(self, running):
        self.denoise_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
