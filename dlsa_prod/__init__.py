"""dlsa_prod: production DLSA (Dynamic Label Space Adjustment) for long-tailed recognition."""

__version__ = "0.1.0"
