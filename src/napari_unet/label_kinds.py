"""What a label image is: instance ids, a binary mask, or objects without background.

Users bring labels from many tools, and three kinds are easy to mistake for
instance ids:

- a **binary mask** (0/1, or 0/255 as 8-bit images are saved): one value over
  several separate regions. Read as ids it is one object, so touching cells get
  no border weights. For instances it is taken as its connected regions
  (4-connected, so a one-pixel membrane or gap between cells separates them),
  which is also what "convert to instances" makes.
- labels **without background**: no pixel is 0. Often the background carries
  a value of its own (1, or 255); "convert to instances" makes the value that
  covers the most pixels the background. Cells that tile the image (EM
  segmentations) are legitimately like this and are taken as they are.
- in semantic mode, values that cannot be classes 1..K: 0/255 would build a
  255-class model whose 0 pixels (the background) are not even annotated.
  Those are refused with what to do (:func:`check_semantic_values`).

Examples
--------
>>> import numpy as np
>>> mask = np.zeros((6, 6), np.uint8); mask[1:3, 1:3] = 255; mask[4:, 4:] = 255
>>> reading = read_labels(mask)
>>> reading.kind, reading.regions
('binary mask', 2)
>>> np.unique(to_instances(mask)).tolist()
[0, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["LabelsReading", "check_semantic_values", "read_labels", "to_instances"]

Kind = Literal["instances", "binary mask", "no background", "empty"]
#: Labels without background: a value covering more than this share is likely the background.
BACKGROUND_SHARE = 0.3


@dataclass(frozen=True)
class LabelsReading:
    """What a label image looks like, and how instance training takes it."""

    kind: Kind
    #: Binary mask: its one nonzero value. No background: the value covering the most pixels.
    value: int | None = None
    #: Binary mask: its separate (4-connected) regions, in the plane that has the most.
    regions: int = 0
    #: No background: the share of the pixels that ``value`` covers.
    share: float = 0.0

    @property
    def convertible(self) -> bool:
        """Whether "convert to instances" would change something."""
        return self.kind == "binary mask" or (
            self.kind == "no background" and self.share > BACKGROUND_SHARE
        )

    def describe(self, name: str) -> str | None:
        """Say what ``name`` will be taken as in instances mode (None for plain instances)."""
        if self.kind == "binary mask":
            return (
                f"{name} are a binary mask (0 and {self.value}): each of its {self.regions} "
                "separate regions is taken as one object. Touching objects that share a "
                "region stay one: paint them apart, or use 'convert to instances' and "
                "correct the result."
            )
        if self.kind == "no background" and self.share > BACKGROUND_SHARE:
            return (
                f"{name} have no background (no pixel is 0), and value {self.value} covers "
                f"{self.share:.0%} of the image: it is taken as one large object. If it is "
                "the background, use 'convert to instances' (it becomes 0)."
            )
        return None


def read_labels(labels: np.ndarray) -> LabelsReading:
    """Say whether ``labels`` are instance ids, a binary mask or lack a background.

    ``labels`` is one 2D plane or a stack of planes (regions are counted per plane).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    values, counts = _value_counts(labels)
    nonzero = values != 0
    if not nonzero.any():
        return LabelsReading("empty")
    if not (~nonzero).any():
        biggest = int(np.argmax(counts))
        return LabelsReading(
            "no background", int(values[biggest]), share=float(counts[biggest] / labels.size)
        )
    if nonzero.sum() == 1:
        planes = labels.reshape(-1, *labels.shape[-2:])  # planes are separate images
        regions = max(int(ndi.label(plane != 0)[1]) for plane in planes)
        if regions > 1:
            return LabelsReading("binary mask", int(values[nonzero][0]), regions=regions)
    return LabelsReading("instances")


def _value_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their pixel counts (a histogram when ids are small: fast)."""
    if labels.size and labels.dtype.kind in "ui" and labels.min() >= 0 and labels.max() < 1 << 20:
        counts = np.bincount(labels.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(labels, return_counts=True)


def to_instances(labels: np.ndarray, reading: LabelsReading | None = None) -> np.ndarray:
    """Return instance ids for ``labels``: mask regions numbered, a background value made 0.

    Plain instance labels come back unchanged (the same array). The result is a
    new array; ``labels`` is never modified.
    """
    from skimage.measure import label

    labels = np.asarray(labels)
    reading = reading or read_labels(labels)
    if not reading.convertible:
        return labels
    if reading.kind == "no background":
        converted = labels.copy()
        converted[labels == reading.value] = 0
        return converted
    planes = labels[None] if labels.ndim == 2 else labels
    out = np.zeros(planes.shape, np.int32)
    for index, plane in enumerate(planes):
        out[index] = label(plane != 0, connectivity=1)
    return out[0] if labels.ndim == 2 else out


def check_semantic_values(labels: np.ndarray, name: str) -> None:
    """Refuse semantic labels whose values cannot plausibly be classes 1..K.

    Raises
    ------
    ValueError
        When most of the classes 1..max never occur (0/255 masks, instance ids),
        with what to do.
    """
    values = np.unique(np.asarray(labels))
    classes = values[values != 0]
    largest = int(classes.max(initial=0))
    if largest > 2 and classes.size < largest / 2:
        shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise ValueError(
            f"{name} use the values {shown} only, so semantic mode would build a "
            f"{largest}-class model in which most classes never occur (and 0 means 'not "
            "annotated', so those pixels teach nothing). A mask saved as 0 and 255 is "
            "objects on background: use instances mode (each separate region becomes an "
            "object). For classes, relabel them as 1, 2, ... K and mark background as a "
            "class too."
        )
