"""napari-unet-segmentation: a paper-faithful U-Net for napari.

The package root exports the compute core only (no Qt, napari or magicgui
imports), so that it can be used from scripts, the command line and notebooks.
The napari widgets live in their own modules and are loaded by napari through
the ``napari.yaml`` manifest when the user opens them.
"""

__version__ = "0.1.0"
