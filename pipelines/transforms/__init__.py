"""Albumentations pipelines and image corruptions."""
