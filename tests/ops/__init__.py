"""Tests of conure/ops/ (the operators, their fused variants, their CUDA kernels, their fuzzed properties)."""
