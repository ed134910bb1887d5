"""The platform's HTTP API (FastAPI): routes, auth, schemas; thin layers over the library."""
