"""Tests of :mod:`miras.symbolic` (one module per module of the package)."""
