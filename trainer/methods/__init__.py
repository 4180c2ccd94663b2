"""Self-supervised methods, one per file; `catalog.METHODS` maps registry names to factories."""
