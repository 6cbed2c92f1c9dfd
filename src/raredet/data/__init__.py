"""raredet.data."""
