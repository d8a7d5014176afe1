"""Call a model over the Open Inference Protocol from Python: tritonclient, then requests."""

import os

import numpy as np
import requests
import tritonclient.http as httpclient

URL, TOKEN = "127.0.0.1:8000", os.environ["TOKEN"]
headers = {"Authorization": f"Bearer {TOKEN}"}

# tritonclient: binary tensor data both ways
client = httpclient.InferenceServerClient(URL)
x = httpclient.InferInput("input", [3], "FP32")
x.set_data_from_numpy(np.array([1.5, 2.5, 4.0], dtype=np.float32), binary_data=True)
out = httpclient.InferRequestedOutput("output", binary_data=True)
result = client.infer("test/tensors", [x], outputs=[out], headers=dict(headers))  # it adds to them
print(result.as_numpy("output"))

# requests: JSON tensors; another method of the servable through parameters.method
body = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["Ada"]}],
        "parameters": {"method": "greet"}}
answer = requests.post(f"http://{URL}/v2/models/test/tensors/infer", json=body,
                       headers=headers, timeout=60)
print(answer.json()["outputs"][0]["data"])
