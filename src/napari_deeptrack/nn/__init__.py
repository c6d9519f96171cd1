"""Neural network models (plain torch), each built from a JSON-able config."""
