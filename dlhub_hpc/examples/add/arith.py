"""A plain Python function published as a servable."""


def add(numbers: list[float]) -> float:
    return float(sum(numbers))
