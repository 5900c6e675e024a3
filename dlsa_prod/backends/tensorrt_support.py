"""Which ONNX operators and input types TensorRT's ONNX parser imports (onnx-tensorrt's support matrix).

The matrix ships as package data (``export/data/onnx_tensorrt_operators_10.1.json``, copied from
onnx-tensorrt ``docs/operators.md`` of the 10.1-GA branch; the file names its commit).  Its
"Supported Types" column lists the input types an importer accepts, so each node's inputs are
checked (outputs such as IsInf's BOOL are not in that column).  ``export --trt`` checks every graph
before building engines, and the tests check every graph the exporter writes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..bundle_spec import package_data

MATRIX_FILE = "onnx_tensorrt_operators_10.1.json"
# ONNX TensorProto element types -> the matrix's type names
ONNX_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
                   16: "BF16"}


@lru_cache(maxsize=1)
def support_matrix() -> dict:
    return json.loads(package_data(MATRIX_FILE).read_text())


def node_input_types(model) -> list[tuple[str, list[str]]]:
    """(op type, [input type name per non-empty input]) for every node, types from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:  # Constant nodes carry their tensor as an attribute
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return [(n.op_type, [ONNX_TYPE_NAMES.get(types.get(i, 0), f"onnx-type-{types.get(i, 0)}") for i in n.input if i])
            for n in g.node]


def unsupported(path: Path) -> list[str]:
    """Problems TensorRT's parser would have with the graph at PATH: unknown or unsupported operators,
    and inputs of a type the operator's importer does not take (empty: the graph imports)."""
    import onnx

    ops = support_matrix()["operators"]
    problems = []
    for op, in_types in node_input_types(onnx.load(str(path))):
        entry = ops.get(op)
        if entry is None or not entry["supported"]:
            problems.append(f"{op}: not supported by TensorRT's ONNX parser")
            continue
        bad = sorted({t for t in in_types if t not in entry["types"]})
        if bad:
            problems.append(f"{op}: input type {', '.join(bad)} not supported (supported: {', '.join(entry['types'])})")
    return sorted(set(problems))
