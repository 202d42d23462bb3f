"""The built-in probe kinds' names, importable without scikit-learn or torch (the CLI checks ``--method``
against them in milliseconds). ``probe.probes.PROBES`` registers exactly these; a test keeps them equal."""

BUILTIN_PROBES = ("ccs", "conditional", "lat", "logistic", "mass_mean", "mass_mean_cov", "ttpd")
