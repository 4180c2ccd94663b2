"""`ingest`: turn a medical image collection into a medshards shard set.

Exit status: 0 all inputs used; 3 finished but some inputs were rejected (listed in
OUT/rejects.jsonl with reasons); 2 the job could not run (bad arguments, unusable root or output
folder); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (re-run the same command to resume). With --dry-run the same codes say
what the plan foresees: 3 planning rejected inputs, 2 the output folder would be refused.

Each source is one module in ingest/sources/ with `add_arguments(parser)` (its own options and
positional ROOT) and `job_from_args(args, common) -> IngestJob`, where `common` holds the options
every source shares (out, size, val_fraction, seed, workers, shard_size, id_salt, splits_from,
overwrite, progress, tool_version).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from importlib import metadata
from pathlib import Path

from ingest import pseudonym
from ingest.arguments import held_out_fraction, non_negative_int, positive_int
from shards import storage
from shards.cpu_budget import usable_cpus
from shards.stop_signal import Terminated, sigterm_as_interrupt

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTS, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


def _one_line_warning(source: str):
    """warnings.formatwarning for a job's warnings: one line for the user, not a file and line of code."""
    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"ingest {source}: warning: {message}\n"
    return format_warning

# subcommand -> (module in ingest/sources/, one-line help)
SOURCES: dict[str, tuple[str, str]] = {
    "cbis": ("ingest.sources.cbis", "CBIS-DDSM mammograms: lesion and/or random tissue crops"),
    "drive": ("ingest.sources.drive", "DRIVE fundus photographs with vessel and field-of-view masks"),
    "if": ("ingest.sources.multiplex_if", "multiplexed immunofluorescence TIFFs: cell-centred or random multi-channel crops"),
    "dicom": ("ingest.sources.dicom_archive", "any unlabeled DICOM archive: whole images or random foreground crops"),
    "cmmd": ("ingest.sources.cmmd", "CMMD mammograms (TCIA download + clinical sheet): random tissue or whole crops"),
    "nih-cxr14": ("ingest.sources.nih_cxr14", "NIH ChestX-ray14 PNGs: 14-finding labels; whole, random or box (lesion) crops"),
    "chexpert": ("ingest.sources.chexpert", "CheXpert JPEGs (train.csv/valid.csv): 14 observations; whole or random crops"),
}


def tool_version() -> str:
    try:
        return metadata.version("medshards")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def output_folder(text: str) -> Path:
    """--out: a folder (local or shared). A URI is refused rather than made into a folder named
    like it: a shard appears by an atomic rename, which object stores lack."""
    if storage.is_uri(text):
        raise argparse.ArgumentTypeError(f"{text}: ingest writes a folder; copy the finished folder to the object "
                                         "store afterwards (e.g. aws s3 sync) and check it with `shards verify URI`")
    return Path(text)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=output_folder, required=True, help="output folder for the shard set")
    p.add_argument("--size", type=positive_int, default=224, help="crop side in pixels after resizing (default %(default)s)")
    p.add_argument("--val-fraction", type=held_out_fraction, default=0.1,
                   help="fraction of training patients carved out as validation (default 0.1)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for the validation split and random crops")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="worker processes (default: the CPUs this process may use, a container's CPU quota included); "
                        "0: decode in the writing process itself, for a debugger or profiler (a crashing decoder "
                        "then ends the job)")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--id-salt", default=None,
                   help="secret for patient pseudonyms (default: $MEDSHARDS_ID_SALT, else a public salt, which "
                        "`ingest dicom` refuses; 'public' asks for it by name)")
    p.add_argument("--splits-from", action="append", default=None, metavar="SET",
                   help="a shard set made before (a folder or URI; repeat for several): its patients keep the split "
                        "they have there, and only new patients are split by the seed (same --id-salt needed)")
    p.add_argument("--overwrite", action="store_true", help="rebuild an output folder that holds a finished set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="plan only: report images and patients per split, planning rejects and what the output "
                        "folder would do; write nothing")


def _common(args: argparse.Namespace) -> dict:
    workers = usable_cpus() if args.workers is None else args.workers  # 0 is a choice: in this process
    return dict(out=args.out, size=args.size, val_fraction=args.val_fraction, seed=args.seed, workers=workers,
                shard_size=args.shard_size, id_salt=args.id_salt, splits_from=args.splits_from, overwrite=args.overwrite,
                progress=not args.no_progress, tool_version=tool_version())


# kind -> (module, function): each writes a dataset under OUT and returns an object whose .root is
# the ROOT to give `ingest <kind>`.
SAMPLE_DATA: dict[str, tuple[str, str]] = {
    "cbis": ("ingest.sample_data.cbis_ddsm", "make_cbis_sample"),
    "nih-cxr14": ("ingest.sample_data.nih_cxr14", "make_nih_sample"),
    "chexpert": ("ingest.sample_data.chexpert", "make_chexpert_sample"),
    "dicom": ("ingest.sample_data.dicom_archive", "make_dicom_archive"),
    "cmmd": ("ingest.sample_data.cmmd", "make_cmmd_sample"),
    "drive": ("ingest.sample_data.drive", "make_drive_sample"),
    "if": ("ingest.sample_data.multiplex_if", "make_if_sample"),
}


def _write_sample_data(args: argparse.Namespace) -> int:
    module, function = SAMPLE_DATA[args.kind]
    make = getattr(importlib.import_module(module), function)
    options = {"cbis": {"patients": args.patients, "layout": args.layout},
               "dicom": {"quirks": False},  # the archive's deliberate defects are for tests
               "cmmd": {"image_shape": (1024, 768)},  # room for the default 512 px random crops
               }.get(args.kind, {})
    try:
        made = make(args.out, seed=args.seed, **options)
    except (OSError, ValueError) as exc:
        print(f"ingest sample-data {args.kind}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Generated IDs are public: an archive's real ones would need a secret salt (ingest.pseudonym).
    salt = f" --id-salt {pseudonym.PUBLIC}" if args.kind == "dicom" else ""
    print(f"sample {args.kind} data written; ingest it with: ingest {args.kind} {made.root} --out DIR{salt}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    for name, (module, help_text) in SOURCES.items():
        p = sub.add_parser(name, help=help_text)
        _add_common(p)  # first, so a source's add_arguments may change a common default (set_defaults)
        importlib.import_module(module).add_arguments(p)

    sample = sub.add_parser("sample-data", help="write a small sample dataset in a source's real on-disk layout (made-up pixels)")
    sample.add_argument("kind", choices=sorted(SAMPLE_DATA), help="which dataset layout to generate")
    sample.add_argument("out", type=Path)
    sample.add_argument("--seed", type=non_negative_int, default=0)
    sample.add_argument("--patients", type=positive_int, default=8, help="cbis only: patients to generate")
    sample.add_argument("--layout", choices=("tcia", "uid"), default="tcia", help="cbis only: download layout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "sample-data":
        return _write_sample_data(args)
    from ingest.pipeline import IngestError, OutputWriteError, run_job

    source = importlib.import_module(SOURCES[args.source][0])
    formatter, warnings.formatwarning = warnings.formatwarning, _one_line_warning(args.source)
    try:
        with sigterm_as_interrupt():  # the unit being written is finished, the shards kept: resumable
            job = source.job_from_args(args, _common(args))
            if args.dry_run:
                return _dry_run(job)
            summary = run_job(job)
    except (IngestError, pseudonym.SecretSaltNeeded, FileNotFoundError) as exc:
        print(f"ingest {args.source}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, OutputWriteError) else EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = "stopped (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\ningest {args.source}: {what}; run the same command again to resume", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = formatter
    print(summary.describe())
    return EXIT_REJECTS if summary.rejects else EXIT_OK


def _dry_run(job) -> int:
    from ingest.plan_report import describe_plan

    report, refused = describe_plan(job)
    print(report)
    if refused:
        return EXIT_USAGE
    return EXIT_REJECTS if job.planning_rejects else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
