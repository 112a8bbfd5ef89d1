"""Scenes the project makes itself (the demo's and the tests' animated sample scene)."""
