"""Data layer: bundled datasets, readers for every supported format, and up-front validation."""
