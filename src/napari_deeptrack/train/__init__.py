"""Training on data simulated on the fly: datasets, trainer, losses, events."""
