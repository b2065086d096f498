"""HTTP adapters: the write API (Starlette on uvicorn) and its problem-details errors."""
