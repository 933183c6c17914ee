"""The Denoise dock widget: an image layer denoised by the model trained in this viewer or by a model file (or
Model Zoo package) read after its safety checks; the result added as a layer with the input's scale, and a
probabilistic model's posterior std beside it."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from . import layers as layer_rules
from . import session
from .train_widget import model_trained_in
from .worker_widget import WorkerWidget, spin_box

if TYPE_CHECKING:
    from napari.layers import Image
    from napari.qt.threading import FunctionWorker
    from napari.viewer import Viewer

    from .._typing import PathLike
    from ..estimator import Noise2VoidDenoiser


class DenoiseWidget(WorkerWidget):
    """Denoise an image layer with the model trained in this viewer or a model file."""

    SOURCES = ("trained in this viewer", "model file")

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__(napari_viewer)
        self.loaded_model: Noise2VoidDenoiser | None = None
        self.model_source = QComboBox()
        self.model_source.addItems(list(self.SOURCES))
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText(".safetensors, a folder holding one, or a Model Zoo .zip of this package")
        self.browse_button = QPushButton("Open ...")
        self.browse_button.clicked.connect(self._ask_model)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.layer = QComboBox()
        self.layer.currentTextChanged.connect(self._guess_axes)
        self.axes = QLineEdit()
        self.tile_size = spin_box(0, 4096, 0, step=32, special="auto")
        self.tta = QCheckBox("Test-time augmentation (8x the work)")
        self.precision = QComboBox()
        self.precision.addItems(["auto", "32", "bf16", "16-mixed"])
        self.denoise_button = QPushButton("Denoise")
        self.denoise_button.clicked.connect(self.start_denoising)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.stop)
        form = QFormLayout()
        form.addRow("Model", self.model_source)
        row = QHBoxLayout()
        row.addWidget(self.model_path)
        row.addWidget(self.browse_button)
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

    def refresh_layers(self, event: object = None) -> None:
        """Offer the viewer's image layers, keeping the choice (else the top layer)."""
        current = self.layer.currentText()
        self.layer.blockSignals(True)
        self.layer.clear()
        names = [layer.name for layer in layer_rules.image_layers(self.viewer)]
        self.layer.addItems(names)
        self.layer.blockSignals(False)
        if current in names:
            self.layer.setCurrentText(current)
        elif names:
            self.layer.setCurrentIndex(len(names) - 1)
        self._guess_axes()

    def _ask_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a model", "", "Models (*.safetensors *.zip)")
        if path:
            self.load_model(path)

    def load_model(self, path: PathLike) -> Noise2VoidDenoiser | None:
        """Read a model file or Model Zoo package (after its safety checks); the file is only read.
        Returns the model, or ``None`` after a notification saying why it could not be read."""
        self.model_path.setText(str(path))
        self.model_source.setCurrentText("model file")
        try:
            model = session.load_model(path)
        except ValueError as exc:
            self.loaded_model = None
            self.model_info.setText("")
            show_error(f"Could not read the model: {exc}")
            return None
        self.loaded_model = model
        self.model_info.setText(
            f"{model.spatial_ndim_}D, {model.n_channels_} channel(s), axes {model.axes or 'inferred'}, "
            f"{len(getattr(model, 'history_', []))} epoch(s)"
            + (f", noise model {model.noise_model}" if model.noise_model is not None else "")
        )
        self._guess_axes()
        return model

    def model(self) -> Noise2VoidDenoiser | None:
        """The chosen model: the one trained in this viewer, or the file read."""
        if self.model_source.currentText() == "model file":
            return self.loaded_model
        return model_trained_in(self.viewer)

    def _guess_axes(self, *args: object) -> None:
        if self.layer.currentText() not in self.viewer.layers:
            return
        axes = layer_rules.infer_axes(self.viewer.layers[self.layer.currentText()])
        model = self.model()
        if model is not None and model.spatial_ndim_ == 2 and "Z" in axes and not {"S", "T"} & set(axes):
            axes = axes.replace("Z", "S")  # a 2D model denoises a stack plane by plane
        self.axes.setText(axes)

    def start_denoising(self) -> FunctionWorker | None:
        """Denoise the chosen layer in a thread worker; the result is added as a new layer. Returns the worker
        (or ``None`` after a notification saying what is wrong with the choice)."""
        if self.running:
            return None
        estimator = self.model()
        if estimator is None:
            show_error(
                "No model: train one with the Train widget, or open a model file."
                if self.model_source.currentIndex() == 0
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
        self.progress.setValue(0)
        self.status.setText(f"denoising {name} ...")
        return self._start(
            session.denoise,
            estimator,
            layer_rules.layer_data(layer),
            axes=axes,
            settings=settings,
            on_done=partial(self._on_denoised, layer),
        )

    def _on_denoised(self, layer: Image, outcome: session.Outcome) -> None:
        if outcome.error is not None:
            self.status.setText("failed")
            show_error(f"Denoising failed: {outcome.error}")
            return
        if outcome.stopped:
            self.status.setText("cancelled: no layer was added")
            return
        denoised, std = outcome.result if isinstance(outcome.result, tuple) else (outcome.result, None)
        for data, kwargs, _ in layer_rules.result_layers(layer, denoised, std):
            self.viewer.add_image(data, **kwargs)
        self.status.setText(f"added {layer.name} denoised")

    def _set_running(self, running: bool) -> None:
        self.denoise_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
