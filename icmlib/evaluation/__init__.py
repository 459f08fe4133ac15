"""Evaluation: anchors (traditional codecs), rate accounting, metrics over a dataset, BD-rate, results files, the reproduction, plots."""
