"""Database helpers shared by the state stores and the targets (SQLite, PostgreSQL)."""
