"""Staff: users and API tokens, site settings, dashboard, metrics, console jobs."""
