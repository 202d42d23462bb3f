"""The suite's analyses (one function per benchmark, registered in :mod:`benchmarks.registry`) and the
helpers they share."""
