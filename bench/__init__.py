"""raredet benchmarks: figures printed and saved under bench/results/, never timed assertions."""
