"""Agent memory: SQLite is the source of truth, the FAISS index is derived from it."""
