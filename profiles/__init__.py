"""Hardware datasheets, model architectures and operator-profile readers."""
