"""The JSON API under /api/v1 with its pydantic schemas, and the machine endpoints
behind tokens (bounce webhook, metrics, health)."""
