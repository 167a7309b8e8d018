"""The nightly history: runs kept in SQLite (store, ingest), judged for steps and drift (detect), drawn (page)."""
