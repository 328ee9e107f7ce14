"""Sample data contributed to napari's File > Open Sample menu.

napari calls the function named in ``napari.yaml``; it returns layer data
tuples, so this module needs no napari import.
"""

from __future__ import annotations

from napari_unet.synthetic import make_touching_nuclei

SAMPLE_SHAPE = (256, 256)
SAMPLE_SEED = 0


def touching_nuclei_sample() -> list[tuple]:
    """Return the synthetic touching nuclei image and its instance labels as layer data."""
    image, labels = make_touching_nuclei(SAMPLE_SHAPE, seed=SAMPLE_SEED)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei labels"}, "labels"),
    ]
