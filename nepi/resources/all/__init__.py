"""NEPI's import paths on nepi_dist: re-exports only."""
