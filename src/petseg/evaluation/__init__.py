"""Evaluation: metrics, scoring a prepared split, the Predictor, and `petseg predict`."""
