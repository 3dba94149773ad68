"""decodekit.fast tests.

Eager cuBLAS is not run-to-run deterministic on an H200 in bf16 unless its workspace is pinned
(measured: two eager runs of one decode forward differed by 0.008 in the logits; with
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` they are equal, and equal to the graph replay). Set it before
any CUDA work so that the graph path can be compared with the eager static path bit for bit.
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
