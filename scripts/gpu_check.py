"""2:4 semi-structured sparsity on a GPU: dense vs ``to_sparse_semi_structured`` linear layers.

Times ``F.linear(x, W)`` against the same weight pruned to 2:4 (top-2 |w| of every four inputs)
and compressed for sparse tensor cores, for large and small shapes in fp16 and bf16, with the
project's protocol (warm-ups, shuffled paired rounds, median speedup, bootstrap 95 % CI, verdict).
Budget: well under 5 minutes on an H200. Prints a table; ``--json PATH`` also writes the rows.
Exits 2 with one line when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without `pip install -e .`

# (label, out_features, in_features, tokens): large GEMMs where 2:4 can pay, small ones where it cannot
SHAPES = [
    ("llm mlp up 4096->16384, 8192 tok", 16384, 4096, 8192),
    ("llm mlp down 16384->4096, 8192 tok", 4096, 16384, 8192),
    ("square 8192, 4096 tok", 8192, 8192, 4096),
    ("square 4096, 2048 tok", 4096, 4096, 2048),
    ("square 4096, 64 tok", 4096, 4096, 64),
    ("square 1024, 1024 tok", 1024, 1024, 1024),
    ("lenet 784->320, 64 tok", 320, 784, 64),  # LeNet-300-100's first layer, padded to kernel multiples
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device (torch.cuda.is_available() is False); 2:4 semi-structured "
              "sparsity needs an NVIDIA GPU with sparse tensor cores (Ampere or newer)", file=sys.stderr)
        return 2
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from sparse_run.hardware.env import environment
    from sparse_run.hardware.timing import Protocol, speedup, time_rounds

    env = environment()
    cusparselt = getattr(torch.backends, "cusparselt", None)
    print(f"gpu: {env.get('gpu')}  torch {torch.__version__}  cuda {torch.version.cuda}  "
          f"cuSPARSELt {env.get('cusparselt')}  (cuSPARSELt in use: "
          f"{not getattr(SparseSemiStructuredTensor, '_FORCE_CUTLASS', False) and bool(cusparselt and cusparselt.is_available())})")
    proto = Protocol(warmup=5, rounds=args.rounds, min_time_s=0.01, bootstrap=2000, seed=0)
    rows, t0 = [], time.time()
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for label, out_f, in_f, tokens in SHAPES:
            gen = torch.Generator(device="cuda").manual_seed(0)
            w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen)
            groups = w.abs().reshape(out_f, -1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
            w = w * keep.reshape(out_f, in_f)
            x = torch.randn(tokens, in_f, device="cuda", dtype=dtype, generator=gen)
            row = {"shape": label, "dtype": dtype_name, "out": out_f, "in": in_f, "tokens": tokens}
            try:
                ws = to_sparse_semi_structured(w)
                err = float((F.linear(x, ws) - F.linear(x, w)).abs().max() / F.linear(x, w).abs().max())
                t = time_rounds({"dense": lambda: F.linear(x, w), "sparse": lambda: F.linear(x, ws)}, proto,
                                torch.cuda.synchronize)
                sp = speedup(t["dense"], t["sparse"], proto)
                row.update(dense_ms=1e3 * float(np.median(t["dense"])), sparse_ms=1e3 * float(np.median(t["sparse"])),
                           speedup=sp.median, lo=sp.lo, hi=sp.hi, verdict=sp.verdict, rel_err=err, status="ok")
            except (RuntimeError, ValueError, NotImplementedError) as e:
                row.update(status=f"failed: {str(e).splitlines()[0][:80]}")
            rows.append(row)
            print(_fmt(row), flush=True)
    print(f"total {time.time() - t0:.0f} s; rounds {proto.rounds}; speedup = median(dense/sparse) [95% CI]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2, default=str)
    return 0


def _fmt(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['shape']:<38} {r['dtype']:<9} {r['status']}"
    return (f"{r['shape']:<38} {r['dtype']:<9} dense {r['dense_ms']:8.3f} ms  2:4 {r['sparse_ms']:8.3f} ms  "
            f"{r['speedup']:5.2f}x [{r['lo']:.2f}, {r['hi']:.2f}] {r['verdict']:<9} rel.err {r['rel_err']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
