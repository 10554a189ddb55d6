"""Metrics (accuracy, F1, perplexity, ...) and plots (loss curve, confusion matrix)."""
