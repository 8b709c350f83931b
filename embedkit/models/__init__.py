"""Built-in model implementations, one file per architecture, plain PyTorch, no remote code.

`registry.detect_family` alone decides which file builds a checkpoint.
"""
