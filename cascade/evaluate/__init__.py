"""Evaluate: the tuning pipeline, test curves and AUC, comparisons, the low-sample study, goodness of fit."""
