"""raredet.modeling."""
