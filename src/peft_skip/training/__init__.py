"""The training engine: the LSkip caches, CSkip, the step, the loops, evaluation, the paper's recipes, run state."""
