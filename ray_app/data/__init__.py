"""Data stage: sources and fingerprints, validation, splits and the fitted preprocessor."""
