"""The napari plugin: the only package that imports napari, qtpy or magicgui."""
