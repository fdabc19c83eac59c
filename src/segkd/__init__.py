"""segkd: distil SegFormer teachers into a small SegFormer student, over seeds and folds."""

__version__ = "0.1.0"
