"""The `shards` console script: ls, verify, preview, stats, index, overlap. Argument parsing only;
each command lives in its own module (listing, verify, preview, stats, span_index, patient_overlap)
and returns the exit code.

Exit codes: 0 good, 1 `verify` found problems or `overlap` patients in different splits, 2 usage error, ROOT is not a readable shard set, or
`stats` / `index` could not compute what they write.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shards import listing, patient_overlap, preview, schema, span_index, stats, storage, verify
from shards.card import read_card


_ROOT_HELP = "shard set folder (holds dataset.json), or its URI: s3://bucket/prefix, gs://..., file:///..."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shards", description="Inspect and check medshards shard sets.")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="summarise a shard set from its dataset.json and manifest, or list "
                                        "the sets in a folder of them")
    ls.add_argument("root", help=_ROOT_HELP + "; or a folder of shard sets")
    ls.add_argument("--json", action="store_true", help="print the summary as JSON")

    check = commands.add_parser("verify", help="check every shard against the card and the manifest")
    check.add_argument("root", help=_ROOT_HELP)
    check.add_argument("--workers", type=int, default=None,
                       help="processes (default: the CPUs this process may use, a container's CPU quota included)")

    sheet = commands.add_parser("preview", help="write a contact-sheet PNG of a few samples")
    sheet.add_argument("root", help=_ROOT_HELP)
    sheet.add_argument("--split", default="train", choices=schema.SPLITS)
    sheet.add_argument("-n", type=int, default=16, help="number of samples (default 16)")
    sheet.add_argument("--out", type=Path, default=None,
                       help="PNG path (default ROOT/preview.png; ./preview.png for a URI)")
    sheet.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    sheet.add_argument("--cols", type=int, default=None, help="tiles per row (default: square-ish)")
    sheet.add_argument("--channel", type=int, default=0, help="channel shown for multi-channel images")
    sheet.add_argument("--tile", type=int, default=preview.TILE, help="tile side in pixels")

    moments = commands.add_parser("stats", help="write per-channel pixel mean/std of the train split into the card")
    moments.add_argument("root", help="shard set folder (holds dataset.json; not a URI: this writes the card)")
    moments.add_argument("--force", action="store_true", help="recompute when the card already has pixel_stats")

    spans = commands.add_parser("index", help="add member spans to the manifest of a set ingested before them "
                                              "(the stream then reads it by offset, not through its tars)")
    spans.add_argument("root", help="shard set folder (holds dataset.json; not a URI: this writes the manifest)")
    spans.add_argument("--force", action="store_true", help="recompute when the manifest already has them")

    shared = commands.add_parser("overlap", help="the patients several shard sets share, and in which splits (exit 1 "
                                                 "when one is in different splits of two sets)")
    shared.add_argument("roots", nargs="+", metavar="root", help=_ROOT_HELP + " (two or more)")
    shared.add_argument("--json", action="store_true", help="print the pairs as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("workers", "n", "cols", "tile"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.command == "overlap":
        return _overlap(parser, args)
    if args.command in ("stats", "index") and storage.is_uri(args.root):
        written = "dataset.json" if args.command == "stats" else schema.MANIFEST_FILE
        print(f"shards {args.command}: error: {args.root}: {args.command} rewrites {written}, which needs a folder; "
              f"run it on the local copy before uploading (ingest writes it itself)", file=sys.stderr)
        return 2
    try:
        card = read_card(args.root)
    except (OSError, ValueError) as exc:  # missing, unreadable, not JSON, not a medshards card
        if args.command == "ls" and (found := _sets_in(args.root)):
            return listing.run_sets(args.root, *found, as_json=args.json)
        print(f"shards {args.command}: error: {args.root} is not a readable shard set: {exc}", file=sys.stderr)
        return 2
    if args.command == "ls":
        return listing.run(args.root, card, as_json=args.json)
    if args.command == "verify":
        return verify.run(args.root, card, workers=args.workers)
    if args.command in ("stats", "index"):
        command = stats.run if args.command == "stats" else span_index.run
        try:
            return command(args.root, card, force=args.force)
        except (OSError, ValueError) as exc:  # SampleError, SpanIndexError and schema errors are ValueErrors
            print(f"shards {args.command}: error: {exc}", file=sys.stderr)
            return 2
    try:
        return preview.run(args.root, card, split=args.split, n=args.n, out=args.out, seed=args.seed,
                           cols=args.cols, channel=args.channel, tile=args.tile)
    except (OSError, ValueError, KeyError) as exc:
        print(f"shards preview: error: {exc}", file=sys.stderr)
        return 2


def _overlap(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if len(args.roots) < 2:
        parser.error("overlap needs two or more shard sets")
    for root in args.roots:
        try:
            read_card(root)
        except (OSError, ValueError) as exc:
            print(f"shards overlap: error: {root} is not a readable shard set: {exc}", file=sys.stderr)
            return 2
    try:
        return patient_overlap.run(args.roots, as_json=args.json)
    except (OSError, ValueError, KeyError) as exc:
        print(f"shards overlap: error: {exc}", file=sys.stderr)
        return 2


def _sets_in(root: str) -> tuple[list, list[str]] | None:
    """The shard sets in a folder of them, or None when it holds none (nor unfinished ones)."""
    try:
        sets, unfinished = listing.list_sets(root)
    except (OSError, ValueError):
        return None
    return (sets, unfinished) if sets or unfinished else None


def console() -> None:
    """The `shards` console script. A reader that stops early (`shards ls --json | head`) ends it
    quietly, as it does `ls` or `cat`, not with a BrokenPipeError traceback; Ctrl-C ends it with
    exit 130 and no traceback (nothing it writes is left half-written: writes are atomic)."""
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("\nshards: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    console()
