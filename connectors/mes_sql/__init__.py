"""An MES interface table (or query) in PostgreSQL or SQLite, polled after a stored cursor."""
