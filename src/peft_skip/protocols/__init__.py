"""The paper's protocols: evaluation (accuracy, base / new / HM), the benchmark runner and its report."""
