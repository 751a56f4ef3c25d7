"""vectorfill: keep pgvector embeddings in step with the text in Postgres."""
