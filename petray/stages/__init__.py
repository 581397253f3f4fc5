"""The pipeline's stages as pure rules: assembly, validation, destinations, delivery, review."""
