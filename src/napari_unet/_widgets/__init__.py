"""The napari dock widgets: a thin layer over the compute core.

Only this subpackage imports Qt, napari and magicgui. ``napari.yaml`` points
at its modules directly, so napari imports them only when a widget opens.
"""
