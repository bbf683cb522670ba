"""Resource managers shipped with nepi_dist (registered through entry points)."""
