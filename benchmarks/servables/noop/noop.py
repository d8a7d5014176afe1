"""The DLHub paper's noop servable: returns its input."""

from typing import Any


def echo(x: Any) -> Any:
    return x
