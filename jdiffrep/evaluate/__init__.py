"""Evaluation protocols on frozen representations (SPEC section 5): linear probes and kNN."""
