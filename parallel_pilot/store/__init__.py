"""Persistence: database tables, every SQL statement, migrations, and the blob store.

Never imports FastAPI.
"""
