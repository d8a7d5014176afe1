def answer(x: int) -> object:
    if x < 0:
        return {(1, 2): 3}  # a dict key msgpack would send but no peer could read
    return {"double": x * 2}
