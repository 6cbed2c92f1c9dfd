"""raredet.losses."""
