import os
import time


def nap(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}
