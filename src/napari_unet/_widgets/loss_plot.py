"""A small live plot of the training loss and validation score, drawn with QPainter.

A plain QWidget keeps the plugin free of a plotting dependency and costs well
under a millisecond per repaint, so it can follow every training step.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(90, 170, 255)
SMOOTH_COLOR = QColor(255, 255, 255)
SCORE_COLOR = QColor(255, 170, 60)
MAX_DRAWN_POINTS = 600  # more points than pixels only cost time


class LossPlot(QWidget):
    """Training loss (log scale, left axis) and validation score (0-1, right axis)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.scores: list[tuple[int, float]] = []
        self.score_name = ""

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.scores.clear()
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        if math.isfinite(loss) and loss > 0:
            self.steps.append(step)
            self.losses.append(loss)
            self.update()  # Qt merges pending repaints

    def add_score(self, step: int, score: float, name: str) -> None:
        self.scores.append((step, score))
        self.score_name = name
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        metrics = painter.fontMetrics()
        left, right = metrics.horizontalAdvance("0.0001") + 8, metrics.horizontalAdvance("1.0") + 10
        top, bottom = 8, metrics.height() + 6
        area = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        if not self.losses:
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss curve appears here")
            painter.end()
            return
        last_step = max(self.steps[-1], self.scores[-1][0] if self.scores else 0, 1)
        low = math.log10(min(self.losses))
        high = math.log10(max(self.losses))
        if high - low < 0.1:
            low, high = low - 0.05, high + 0.05

        def x_of(step: float) -> float:
            return area.left() + area.width() * step / last_step

        def y_of_loss(loss: float) -> float:
            return area.bottom() - area.height() * (math.log10(loss) - low) / (high - low)

        stride = max(1, len(self.losses) // MAX_DRAWN_POINTS)
        raw = QPainterPath()
        for i in range(0, len(self.losses), stride):
            point = QPointF(x_of(self.steps[i]), y_of_loss(self.losses[i]))
            raw.lineTo(point) if i else raw.moveTo(point)
        painter.setPen(QPen(LOSS_COLOR, 1))
        painter.drawPath(raw)
        # A running mean shows the trend through the noise of batch-1 steps.
        window = max(1, len(self.losses) // 20)
        smooth, total = QPainterPath(), 0.0
        for i, loss in enumerate(self.losses):
            total += loss - (self.losses[i - window] if i >= window else 0.0)
            if i % stride == 0 or i == len(self.losses) - 1:
                mean = total / min(i + 1, window)
                point = QPointF(x_of(self.steps[i]), y_of_loss(mean))
                smooth.lineTo(point) if i else smooth.moveTo(point)
        painter.setPen(QPen(SMOOTH_COLOR, 2))
        painter.drawPath(smooth)
        painter.setPen(QPen(text, 1))
        painter.drawText(QPointF(2, area.top() + metrics.ascent()), f"{10**high:.3g}")
        painter.drawText(QPointF(2, area.bottom()), f"{10**low:.3g}")
        painter.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), metrics.height()),
            Qt.AlignmentFlag.AlignCenter,
            f"loss (log scale) vs step, {self.steps[-1]} steps",
        )
        if self.scores:
            painter.setPen(QPen(SCORE_COLOR, 2))
            painter.setBrush(SCORE_COLOR)
            path = QPainterPath()
            for i, (step, score) in enumerate(self.scores):
                point = QPointF(x_of(step), area.bottom() - area.height() * score)
                path.lineTo(point) if i else path.moveTo(point)
                painter.drawEllipse(point, 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)
            painter.drawText(QPointF(area.right() + 3, area.top() + metrics.ascent()), "1")
            painter.drawText(QPointF(area.right() + 3, area.bottom()), "0")
            painter.drawText(
                QRectF(area.left(), area.top() + 2, area.width() - 4, metrics.height()),
                Qt.AlignmentFlag.AlignRight,
                f"{self.score_name} {self.scores[-1][1]:.2f}",
            )
        painter.end()
