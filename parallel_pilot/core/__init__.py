"""Pure building blocks shared by every side: states, wire models, settings, ranges.

Imports only the standard library and pydantic.
"""
