"""argparse value types shared by the experiment scripts: each refuses a bad value with the
range it allows."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def image_size(text: str) -> int:
    value = int(text)
    if not 64 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be an int in [64, 1024] px, got {text}")
    return value
