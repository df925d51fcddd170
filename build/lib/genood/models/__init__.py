"""Density models behind one interface (:mod:`models.base`) and the training loop."""
