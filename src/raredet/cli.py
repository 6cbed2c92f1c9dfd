"""Command-line front end: argparse only; every verb calls one library function.

Each verb has an `_add_<verb>` function that declares its arguments and sets `func`, a callable that
takes the parsed namespace and returns an exit code. Imports of heavy modules happen inside `func`, so
`raredet --help` stays fast. Errors of type `RaredetError` print as one clear message with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from raredet.errors import RaredetError

AddVerb = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


# ---- verbs (one block each; keep them thin) -------------------------------------------------------


# ---- end of verbs ----------------------------------------------------------------------------------

VERBS: list[AddVerb] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raredet",
        description="Train and evaluate object detectors on imbalanced data, configured by pipeline.config.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.verb is None else 2
    try:
        return int(args.func(args) or 0)
    except RaredetError as err:
        print(f"raredet {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raredet {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
