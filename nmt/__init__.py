"""RevNMT: neural machine translation with reversible recurrent networks."""

__version__ = "0.1.0"
