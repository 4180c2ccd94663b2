"""Losses, one per file: tensors in, scalar out, no model state."""
