"""coalign's benchmark suite: configs in ``benchmarks/configs``, analyses in ``benchmarks.lib``.

Run from the repository root: ``python -m benchmarks run CONFIG [--quick] [--out DIR]``; see
``benchmarks/README.md``. The product packages never import this package.
"""
