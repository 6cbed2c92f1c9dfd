"""raredet.evaluation."""
