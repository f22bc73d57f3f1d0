"""The official Triton client against one server: ``python tests/kserve_triton_client.py HOST:PORT REQUEST.json``
prints the answers as JSON (used by tests/test_cloud_kserve.py). A child process of its own: tritonclient's
protocol module and privsplit's define the same names in protobuf's default pool."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _triton_main(target: str, request_path: str) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def status(call):
        try:
            return {"ok": call()}
        except InferenceServerException as exc:
            return {"status": exc.status(), "message": exc.message()}

    req = json.loads(Path(request_path).read_text())
    client = grpcclient.InferenceServerClient(url=target)
    out: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("privsplit"),
        "unknown_model_ready": status(lambda: client.is_model_ready("no-such-model")),
        "model_metadata": client.get_model_metadata("privsplit", as_json=True),
    }
    features = np.asarray(req["features"], dtype=np.int8)
    inp = grpcclient.InferInput("features", list(features.shape), "INT8")
    inp.set_data_from_numpy(features)
    # tritonclient has request-level parameters only: the server reads scale / zero_point there too
    params = {"encoder_hash": req["encoder_hash"], "scale": float(req["scale"]), "zero_point": int(req["zero_point"])}
    result = client.infer("privsplit", [inp], parameters=params, request_id="triton-1")
    response = result.get_response(as_json=True)
    out["infer"] = {
        "probs": result.as_numpy("probs").tolist(),
        "label": result.as_numpy("label").tolist(),
        "id": response.get("id"),
        "parameters": response.get("parameters", {}),
    }
    only = client.infer(
        "privsplit",
        [inp],
        parameters={**params, "label_only": True},
        outputs=[grpcclient.InferRequestedOutput("label")],
    )
    out["label_only"] = {"label": only.as_numpy("label").tolist(), "probs_absent": only.as_numpy("probs") is None}
    out["bad_hash"] = status(lambda: client.infer("privsplit", [inp], parameters={**params, "encoder_hash": "0" * 64}))
    out["bad_version"] = status(lambda: client.infer("privsplit", [inp], model_version="9", parameters=params))
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/kserve_triton_client.py HOST:PORT REQUEST.json")
    _triton_main(sys.argv[1], sys.argv[2])
