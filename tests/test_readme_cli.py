"""The README documents every option of every command (`ingest`, `shards`, the trainer's three
scripts) and every config key. One added without a word in the README fails here, naming it."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.cli import build_parser as ingest_parser
from shards.cli import _parser as shards_parser
from trainer.config import ExperimentConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), parser
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _undocumented(flags: set[str]) -> list[str]:
    return sorted(f for f in flags - {"--help"} if not re.search(re.escape(f) + r"(?![\w-])", README))


@pytest.mark.parametrize("top, make", [("ingest", ingest_parser), ("shards", shards_parser)])
def test_every_option_of_the_command_line_tools_is_in_the_readme(top, make):
    missing = []
    for command, parser in _commands(make(), (top,)):
        flags = {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}
        missing += [f"{command} {flag}" for flag in _undocumented(flags)]
    assert missing == []


def _ingest_section(command: str) -> str:
    """The README's text on `ingest COMMAND`: cbis's and sample-data's own headings; the other
    sources' bullets, with the paragraph that opens them (their common options)."""
    if command in ("cbis", "sample-data"):
        return re.search(rf"\n### `ingest {command} .*?(?=\n### )", README, re.S).group(0)
    intro = re.search(r"\n### The other sources\n.*?(?=\n- \*\*`)", README, re.S).group(0)
    bullet = re.search(rf"\n- \*\*`ingest {re.escape(command)} .*?(?=\n- \*\*`|\n### |\n## )", README, re.S)
    assert bullet, f"no README bullet for ingest {command}"
    return intro + bullet.group(0)


def test_every_ingest_option_is_where_its_source_is_described():
    """Not only somewhere: `--patients` of `ingest if` went unsaid while sample-data's was there."""
    [subcommands] = [a.choices for a in ingest_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for command, parser in subcommands.items():
        section = _ingest_section(command)
        missing += [f"ingest {command} {flag}" for action in parser._actions for flag in action.option_strings
                    if flag.startswith("--") and flag != "--help" and not re.search(re.escape(flag) + r"(?![\w-])", section)]
    assert missing == []


@pytest.mark.parametrize("script", ["pretrain", "export_encoder", "linear_probe"])
def test_every_option_of_the_trainer_scripts_is_in_the_readme(script, capsys):
    module = __import__(f"trainer.{script}", fromlist=["main"])
    with pytest.raises(SystemExit):
        module.main(["--help"])
    flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out))
    assert len(flags) > 1  # the help was read
    assert _undocumented(flags) == []


def test_every_config_key_is_in_its_sections_row_of_the_readme_table():
    """`| \\`run\\` | ... |` names every field of RunConfig, and so on for each section."""
    config, missing = ExperimentConfig(), []
    for section in dataclasses.fields(ExperimentConfig):
        row = next((line for line in README.splitlines() if line.startswith(f"| `{section.name}` |")), "")
        missing += [f"{section.name}.{key.name}" for key in dataclasses.fields(getattr(config, section.name))
                    if not re.search(rf"`{re.escape(key.name)}(?!\w)", row)]
    assert missing == []
