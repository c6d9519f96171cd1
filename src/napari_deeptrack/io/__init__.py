"""Files: TIFF with pixel size, model bundles (safetensors + JSON, never pickle), CSV tables."""
