"""`python -m raredet …` (used by `torchrun -m raredet train …`)."""

from raredet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
