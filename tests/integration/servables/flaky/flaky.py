def check(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * 2
