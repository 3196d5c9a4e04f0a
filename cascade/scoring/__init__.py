"""Scoring: the scoring config, engines, model materialisation, and one stage's scoring of a batch."""
