"""Alembic migrations of the controller's database (run by controller/migrate.py, never by hand)."""
