"""The platform's HTTP API (FastAPI, ``/v2`` paths, CONTRACT.md section 3)."""
