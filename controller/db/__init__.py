"""The database: tables, migrations, the registry's and telemetry's queries."""
