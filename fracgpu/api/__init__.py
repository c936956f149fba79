"""Contracts shared by every fracgpu program and its users. Leaf: imports nothing of ours."""
