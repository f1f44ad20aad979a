"""`echo-ray demo`'s arguments and plan: the raw-vs-normalized ablation arm runs only with --ablation."""

from __future__ import annotations

import argparse

import pytest

from echo_ray.demo import add_demo_parser, demo_arms


def parse_demo(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="echo-ray")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["demo", *argv])


def test_ablation_is_off_by_default_and_on_with_the_flag() -> None:
    assert parse_demo().ablation is False
    assert parse_demo("--ablation").ablation is True


def test_skip_ablation_is_gone(capsys) -> None:
    """The old opt-out flag is an argparse error naming it, not a silent no-op."""
    with pytest.raises(SystemExit) as exc:
        parse_demo("--skip-ablation")
    assert exc.value.code == 2
    assert "--skip-ablation" in capsys.readouterr().err


def test_default_plan_has_no_raw_arm() -> None:
    assert demo_arms(ablation=False, block_index=0) == [("", False)]
    assert demo_arms(ablation=False, block_index=1) == [("", False)]


def test_ablation_adds_the_raw_arm_for_the_first_block_size_only() -> None:
    assert demo_arms(ablation=True, block_index=0) == [("", False), ("_raw", True)]
    assert demo_arms(ablation=True, block_index=1) == [("", False)]
