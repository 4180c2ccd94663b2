"""Reusable building blocks, one per file, that know nothing of the SSL methods using them."""
