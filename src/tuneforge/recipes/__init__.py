"""Recipes: a config becomes a trained, evaluated run. build (YAML + --set + the rules that span sections +
stages), lm (language models), classify (classification heads), stages, run (the one dispatch), splits (a run's
data), runs (finished runs read back)."""
