import torch

# Benchmarks set the thread count explicitly, so runs on one machine compare.
THREADS = int(__import__("os").environ.get("CONURE_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
