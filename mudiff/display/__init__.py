"""Figures and the notebooks' interactive explorers."""
