"""Measuring a pair: error rates (wer.py), numeric parity (parity.py), real-time factor (rtf.py),
and the ordered checks the pipeline and `optimize eval` run on every pair (suite.py)."""
