"""Training: the loop, its step variants (autograd, MLP fast path, stacked ensemble), the fused
optimizer and the stopping rules. Knows nothing of experiments or of the run machinery."""
