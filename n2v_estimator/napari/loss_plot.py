"""The Train widget's training curve: training and validation loss per epoch, drawn with Qt's painter
(no plotting library), updated as each epoch completes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

if TYPE_CHECKING:
    from qtpy.QtGui import QPaintEvent


class LossPlot(QWidget):
    """Training and validation loss per epoch, drawn as two lines."""

    COLOURS = {"train": QColor(80, 160, 255), "validation": QColor(255, 150, 60)}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.curves: dict[str, list[float]] = {"train": [], "validation": []}

    def clear(self) -> None:
        """Forget the curves (a new training run begins)."""
        self.curves = {"train": [], "validation": []}
        self.update()

    def add_epoch(self, record: Mapping[str, Any]) -> None:
        """Add an epoch's ``history_`` record (``train_loss``, and ``val_loss`` or ``None``) and redraw."""
        self.curves["train"].append(float(record["train_loss"]))
        if record.get("val_loss") is not None:
            self.curves["validation"].append(float(record["val_loss"]))
        self.update()

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt's name)
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
