"""Hypothesis strategies of malformed and hostile Open Inference Protocol requests, shared by
tests/test_cloud_fuzz.py and benchmarks/serve_hardening.py (no tests here).

:func:`requests`: plausible requests with one thing or several wrong (names, datatypes, shapes, contents,
parameters, outputs, hashes). :func:`hostile_requests` adds what an attacker would send: huge or deep
shapes, datatypes that do not match the contents, byte counts that do not match the shape, parameter and
output bombs, long ids, and both raw and typed contents at once.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from privsplit.proto.inference import open_inference_grpc_pb2 as pb

DATATYPES = ["INT8", "UINT8", "FP16", "FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "BF16", "", "int8", "FLOAT"]
ITEMSIZE = {"INT8": 1, "UINT8": 1, "BOOL": 1, "FP16": 2, "BF16": 2, "FP32": 4, "INT32": 4, "FP64": 8, "INT64": 8}
MAX_BOMB_BYTES = 400_000  # parameter bombs stay under the server's message limit (the limit has its own case)


PARAMS = st.one_of(  # built once: a strategy made per draw is validated again each time (slow)
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=70)),
    st.just(pb.InferParameter()),  # no value set
)


CONTENTS = {
    name: st.lists(values, max_size=40)
    for name, values in {
        "int_contents": st.integers(-(2**31), 2**31 - 1),
        "uint_contents": st.integers(0, 2**32 - 1),
        "fp32_contents": st.floats(width=32),
        "int64_contents": st.integers(-(2**63), 2**63 - 1),
        "bool_contents": st.booleans(),
    }.items()
}


def _param(draw):
    return draw(PARAMS)


@st.composite
def requests(draw, spec_version: str, good_hash: str):
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["privsplit", "privsplit", "", "other"])),
        model_version=draw(st.sampled_from(["", "", spec_version, "1"])),
        id=draw(st.text(max_size=6)),
    )
    n_inputs = draw(st.integers(0, 2))
    use_raw = draw(st.booleans())
    for _ in range(n_inputs):
        t = msg.inputs.add(
            name=draw(st.sampled_from(["features", "features", "image", ""])), datatype=draw(st.sampled_from(DATATYPES))
        )
        shape = draw(
            st.one_of(st.just([draw(st.integers(-1, 3)), 32, 8, 8]), st.lists(st.integers(-2, 40), max_size=5))
        )
        t.shape.extend(shape)
        for key in draw(
            st.lists(st.sampled_from(["scale", "zero_point", "encoder_hash", "x"]), max_size=3, unique=True)
        ):
            t.parameters[key].CopyFrom(_param(draw))
        if use_raw:
            size = draw(st.sampled_from(["exact", "random"]))
            count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
            itemsize = {"INT8": 1, "UINT8": 1, "BOOL": 1, "FP16": 2, "FP32": 4, "INT32": 4, "FP64": 8, "INT64": 8}.get(
                t.datatype, 1
            )
            length = count * itemsize if size == "exact" and count * itemsize < 200_000 else draw(st.integers(0, 3000))
            msg.raw_input_contents.append(
                draw(st.binary(min_size=length, max_size=length)) if length < 5000 else bytes(length)
            )
        elif draw(st.booleans()):
            field = draw(
                st.sampled_from(["int_contents", "uint_contents", "fp32_contents", "int64_contents", "bool_contents"])
            )
            getattr(t.contents, field).extend(draw(CONTENTS[field]))
    if use_raw and draw(st.booleans()):
        msg.raw_input_contents.append(b"\x00")  # one too many
    hash_choice = draw(st.sampled_from(["good", "good", "bad", "missing", "typed"]))
    if hash_choice == "good":
        msg.parameters["encoder_hash"].string_param = good_hash
    elif hash_choice == "bad":
        msg.parameters["encoder_hash"].string_param = draw(st.text(max_size=64))
    elif hash_choice == "typed":
        msg.parameters["encoder_hash"].CopyFrom(_param(draw))
    for key in draw(st.lists(st.sampled_from(["scale", "zero_point", "label_only", "other"]), max_size=3, unique=True)):
        msg.parameters[key].CopyFrom(_param(draw))
    for name in draw(st.lists(st.sampled_from(["probs", "label", "logits", ""]), max_size=3)):
        msg.outputs.add(name=name)
    return msg


@st.composite
def hostile_requests(draw, spec_version: str, good_hash: str, feature_shape: tuple[int, int, int]):
    """A plausible or malformed request (:func:`requests`), then one or more hostile edits."""
    msg = draw(requests(spec_version, good_hash))
    c, h, w = feature_shape
    for attack in draw(
        st.lists(
            st.sampled_from(["huge_shape", "deep_shape", "datatype", "byte_count", "params", "outputs", "id", "both"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    ):
        if not msg.inputs:
            msg.inputs.add(name="features", datatype="INT8")
        t = msg.inputs[0]
        if attack == "huge_shape":  # claims far more than it carries
            del t.shape[:]
            big = draw(st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)]))
            t.shape.extend(draw(st.permutations([big, c, h, w])))
        elif attack == "deep_shape":
            del t.shape[:]
            t.shape.extend(draw(st.lists(st.integers(0, 2**20), min_size=5, max_size=64)))
        elif attack == "datatype":  # a datatype that does not match the contents sent
            t.datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=40)))
        elif attack == "byte_count":  # the right shape, the wrong number of bytes
            del t.shape[:]
            n = draw(st.integers(1, 4))
            t.shape.extend([n, c, h, w])
            exact = n * c * h * w * ITEMSIZE.get(t.datatype, 1)
            size = draw(st.sampled_from([0, 1, exact - 1, exact + 1, exact * 2, exact // 2]))
            del msg.raw_input_contents[:]
            msg.raw_input_contents.append(bytes(max(size, 0)))
        elif attack == "params":  # many keys, long keys, long strings
            count = draw(st.sampled_from([100, 1000, 5000]))
            value = "x" * draw(st.sampled_from([0, 100, 10_000]))
            budget = MAX_BOMB_BYTES // max(len(value) + 20, 1)
            target = msg.parameters if draw(st.booleans()) else t.parameters
            for i in range(min(count, budget)):
                target[f"p{i}"].string_param = value
            target["k" * draw(st.sampled_from([1, 1000, 50_000]))].int64_param = 1
        elif attack == "outputs":  # built without a draw per entry (hypothesis's buffer is small)
            names = ("probs", "label", "probs", "logits")
            for i in range(draw(st.sampled_from([10, 1000, 10_000]))):
                msg.outputs.add(name=names[i % len(names)] if i % 5 else f"o{i}")
        elif attack == "id":
            msg.id = "i" * draw(st.sampled_from([1000, 100_000]))
        elif attack == "both":  # raw contents and typed contents at once
            t.contents.int_contents.extend(range(draw(st.integers(1, 300))))
            msg.raw_input_contents.append(bytes(draw(st.integers(0, 3000))))
    return msg
