"""Helpers for the tools clipsam's files go to, where the hierarchy needs more than the file (FiftyOne)."""
