"""Offline side of exdd: datasets, features, coreset, banks, calibration, evaluation, synthesis."""
