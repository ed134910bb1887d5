"""Real components for integration tests: a throwaway PostgreSQL cluster and uvicorn servers."""
