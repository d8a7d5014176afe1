"""PyTriton's HTTP endpoint serving an identity model ``noop`` (FP32 vector in, the same
out): what benchmarks/gateway.py compares the gateway with. Run by that script, under a
Python that has nvidia-pytriton (see its docstring):

    python benchmarks/_pytriton/server.py HTTP_PORT
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

logger = logging.getLogger(__name__)


@batch
def noop(input: np.ndarray) -> dict[str, np.ndarray]:
    return {"output": input}


def main() -> None:
    port = int(sys.argv[1])
    config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2,
                          log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="noop", infer_func=noop,
                    inputs=[Tensor(name="input", dtype=np.float32, shape=(-1,))],
                    outputs=[Tensor(name="output", dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(max_batch_size=64))
        print("pytriton ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
