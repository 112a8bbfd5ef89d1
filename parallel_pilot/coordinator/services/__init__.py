"""Coordinator services: the logic behind the routes, callable without HTTP."""
