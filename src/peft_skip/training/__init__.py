"""The training engine: the LSkip caches, CSkip, the step, the loop, the paper's recipes, run state."""
