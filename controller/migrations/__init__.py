"""Alembic migrations of the controller's database (run by controller/db/migrate.py, never by hand)."""
