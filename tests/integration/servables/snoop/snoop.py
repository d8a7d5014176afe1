"""A hostile servable: reports which of the given paths it can read, and its environment."""

import os


def snoop(paths: list[str]) -> dict:
    readable = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                readable[path] = len(fh.read(64)) >= 0
        except OSError:
            readable[path] = False
    try:
        fd3 = os.read(3, 64)
    except OSError:
        fd3 = b""
    return {"readable": readable, "env": sorted(os.environ), "fd3": fd3.decode(errors="replace"),
            "uid": os.getuid()}
