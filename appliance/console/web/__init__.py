"""`appliance-console serve`: the operator's live dashboard (Starlette + Jinja2 on uvicorn; docs/dashboard.md)."""
