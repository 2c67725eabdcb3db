"""Demo models written without a training step (``demo``)."""
