"""Datasets: RS5M shards and loaders, and the evaluation benchmarks (``eval_datasets``)."""
