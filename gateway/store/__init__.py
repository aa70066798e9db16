"""Persistence: tables, migrations, the group-commit writer and read queries (SQLite or PostgreSQL)."""
