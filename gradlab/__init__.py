"""gradlab: a laboratory for vanishing and exploding gradients in deep networks."""

__version__ = "0.1.0"
