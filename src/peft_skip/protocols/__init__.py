"""The paper's protocols: the benchmark runner over (dataset, seed) cells and its report."""
