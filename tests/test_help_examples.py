"""Every ``mist <command> --help`` example runs as written from a clone.

Each example is parsed by the real parser (so every flag and value is one the command
takes), and every input path it names exists from the repository root (those under
``../shared`` when that folder is beside the clone). Running each example in full is
left to the tests of each command: some take minutes.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from mist.validate.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
#: flags whose value a command writes rather than reads
OUTPUT_FLAGS = {"--out", "--json", "--rows", "--fit-step-overhead", "--fit-moe-efficiency"}


def _examples(module_name: str) -> list[list[str]]:
    doc = importlib.import_module(module_name).__doc__ or ""
    text = re.sub(r"\\\n\s*", " ", doc)  # join continued lines
    return [shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith("mist ")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_example_parses_and_names_inputs_that_exist(command):
    examples = _examples(COMMANDS[command])
    assert examples, f"mist {command} --help shows no example"
    parser = build_parser()
    for argv in examples:
        assert argv[1] == command
        parser.parse_args(argv[1:])  # exits (fails the test) on a flag the command lacks
        for i, token in enumerate(argv[2:], start=2):
            looks_like_path = "/" in token or re.search(r"\.(json|jsonl|csv|yaml|parquet)$", token)
            if token.startswith("-") or argv[i - 1] in OUTPUT_FLAGS or not looks_like_path:
                continue
            path = REPO / token
            if token.startswith("../shared") and not (REPO.parent / "shared").is_dir():
                continue
            assert path.exists(), f"mist {command} --help example names {token}, which does not exist"
