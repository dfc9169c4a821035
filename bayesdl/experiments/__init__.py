"""The lecture's experiments behind the ``bayesdl`` command line (fit, tabulate, plot)."""
