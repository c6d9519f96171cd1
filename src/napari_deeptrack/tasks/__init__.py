"""Task presets: simulation + target + model + post-processing + metrics for one use case."""
