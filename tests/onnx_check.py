#!/usr/bin/env python3
"""Checks an ONNX file written by `ctorch export` with the real peers (tests/test_onnx.c).

    onnx_check.py [--batches 1,64] MODEL.onnx[:DATA.safetensors]...

1. onnx.checker.check_model(full_check=True) (with shape inference);
2. with DATA (written by the C test: "input" [N, C, H, W] float32, "logits" [N, K] float32
   computed by ctorch, optionally "labels" [N] int64): ONNX Runtime (CPU) on the inputs, in
   chunks of at most 256, compared with ctorch's logits;
3. --batches: also runs the first B images as one batch for each B (a dynamic batch).

One line per model (one process for all: importing onnx and onnxruntime takes a second), a
JSON object: checker, n, max_abs, max_ref, max_rel = max_abs / max_ref (the
largest difference relative to the largest logit), argmax_disagree (the images whose class
differs, with both top-2 margins), ort_correct / ct_correct when labels are given, and
batches: {B: max_rel of that run}, or {"error": ...} when the checker or ONNX Runtime
fails. Exit 0 (the C test judges).
"""
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort

DTYPES = {"F32": np.float32, "I64": np.int64, "F64": np.float64}


def load_safetensors(path):
    """The tensors of a safetensors file (json header + raw little-endian bytes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        b, e = d["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=DTYPES[d["dtype"]]).reshape(d["shape"])
    return out


def run(sess, x, chunk=256):
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + chunk]})[0]
                           for i in range(0, len(x), chunk)])


def margin(row):
    top = np.sort(row)[-2:]
    return float(top[1] - top[0])


def check(path, data, batches):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    res = {"model": path, "checker": "ok", "onnx": onnx.__version__,
           "onnxruntime": ort.__version__}
    if not data:
        return res
    d = load_safetensors(data)
    x, ref = d["input"], d["logits"].astype(np.float64)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    got = run(sess, x).astype(np.float64)
    diff = np.abs(got - ref)
    res.update(n=len(x), max_abs=float(diff.max()), max_ref=float(np.abs(ref).max()))
    res["max_rel"] = res["max_abs"] / max(res["max_ref"], 1e-12)
    a, b = got.argmax(1), ref.argmax(1)
    res["argmax_disagree"] = [{"image": int(i), "ort": int(a[i]), "ctorch": int(b[i]),
                               "ort_margin": margin(got[i]), "ctorch_margin": margin(ref[i])}
                              for i in np.nonzero(a != b)[0][:20]]
    res["n_disagree"] = int((a != b).sum())
    if "labels" in d:
        y = d["labels"]
        res.update(ort_correct=int((a == y).sum()), ct_correct=int((b == y).sum()))
    res["batches"] = {}
    for bsz in batches:  # the first bsz images (all of them when there are fewer) at once
        out = sess.run(["logits"], {"input": x[:bsz]})[0].astype(np.float64)
        r = ref[:bsz]
        res["batches"][str(bsz)] = {"shape": list(out.shape),
                                    "max_rel": float(np.abs(out - r).max() / max(np.abs(r).max(), 1e-12))}
    return res


def main():
    argv = sys.argv[1:]
    batches = []
    if argv[:1] == ["--batches"]:
        batches = [int(b) for b in argv[1].split(",")]
        argv = argv[2:]
    for arg in argv:
        path, _, data = arg.partition(":")
        try:
            res = check(path, data, batches)
        except Exception as e:  # the C test shows this line
            res = {"model": path, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
