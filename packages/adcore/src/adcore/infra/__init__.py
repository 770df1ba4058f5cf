"""Foundations of every layer: errors, progress, devices, precision, atomic files."""
