"""Benchmark mmapkv against the stores a Python user would otherwise pick (see :mod:`.runner`)."""

from .runner import ADAPTERS, OPS, SIZES, main, make_record, percentiles

__all__ = ["main", "make_record", "percentiles", "ADAPTERS", "OPS", "SIZES"]
