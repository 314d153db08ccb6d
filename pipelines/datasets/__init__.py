"""Readers for real on-disk formats, split builders, and synthetic generators writing the same formats."""
