"""raredet.engine."""
