"""Tests of conure/data/ (readers, interactions, task building, samplers, the synthetic generator)."""
