"""`ingest`: turn a medical image collection into a medshards shard set.

Exit status: 0 all inputs used; 3 finished but some inputs were rejected (listed in
OUT/rejects.jsonl with reasons); 2 the job could not run (bad arguments, unusable root or output
folder); 130 interrupted (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def tool_version() -> str:
    try:
        return metadata.version("medshards")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder for the shard set")
    p.add_argument("--size", type=int, default=224, help="crop side in pixels after resizing (default 224)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of training patients carved out as validation (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for the validation split and random crops")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--id-salt", default=None,
                   help="secret for patient pseudonyms (default: $MEDSHARDS_ID_SALT, else a public salt)")
    p.add_argument("--overwrite", action="store_true", help="rebuild an output folder that holds a finished set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)

    cbis = sub.add_parser("cbis", help="CBIS-DDSM mammograms: lesion and/or random tissue crops")
    cbis.add_argument("root", type=Path, help="CBIS-DDSM folder: a TCIA download (with metadata.csv) or the UID layout")
    _add_common(cbis)
    cbis.add_argument("--crops", choices=("lesion", "random", "both"), default="lesion")
    cbis.add_argument("--csv", type=Path, nargs="+", default=None,
                      help="case-description CSVs (default: the four official names, found under ROOT)")
    cbis.add_argument("--margin", type=float, default=0.2, help="lesion context per side, fraction of the ROI (default 0.2)")
    cbis.add_argument("--random-per-image", type=int, default=4, help="random tissue crops per mammogram (default 4)")
    cbis.add_argument("--random-side", type=int, default=512, help="random crop side in source pixels (default 512)")
    cbis.add_argument("--min-tissue", type=float, default=0.9, help="least tissue fraction of a random crop (default 0.9)")
    cbis.add_argument("--overlap", choices=("test", "keep"), default="test",
                      help="patients in both official splits: move wholly to test (default) or keep as published")

    sample = sub.add_parser("sample-data", help="write the small built-in sample dataset")
    sample.add_argument("kind", choices=("cbis",), help="which dataset layout to generate")
    sample.add_argument("out", type=Path)
    sample.add_argument("--patients", type=int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--layout", choices=("tcia", "uid"), default="tcia")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "sample-data":
        from ingest.sample_data.cbis_ddsm import make_cbis_sample

        made = make_cbis_sample(args.out, patients=args.patients, seed=args.seed, layout=args.layout)
        print(f"sample CBIS-DDSM ({args.layout} layout): {made.images} mammograms, {made.abnormalities} "
              f"abnormalities, {made.patients} patients in {made.root}")
        return EXIT_OK
    from ingest.pipeline import IngestError, default_workers, run_job
    from ingest.sources import cbis

    if args.workers is None:
        args.workers = default_workers()
    try:
        job = cbis.build_job(
            root=args.root, out=args.out, crops=args.crops, csv_paths=args.csv, size=args.size,
            margin=args.margin, random_per_image=args.random_per_image, random_side=args.random_side,
            min_tissue=args.min_tissue, val_fraction=args.val_fraction, seed=args.seed, overlap=args.overlap,
            workers=args.workers, shard_size=args.shard_size, id_salt=args.id_salt, overwrite=args.overwrite,
            progress=not args.no_progress, tool_version=tool_version(),
        )
        summary = run_job(job)
    except (IngestError, cbis.CbisInputError, FileNotFoundError) as exc:
        print(f"ingest {args.source}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\ningest {args.source}: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.describe())
    return EXIT_REJECTS if summary.rejects else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
