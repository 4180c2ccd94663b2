"""Augmented views made on the device, batched, for the methods that compare or restore views."""
