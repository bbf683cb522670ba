"""Benchmarks of issue 5: nepi_dist against the raw Celery + Redis floor (see bench/README.md)."""
