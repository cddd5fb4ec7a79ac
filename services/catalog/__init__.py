"""catalog: the Tornado service, on its own IOLoop (python -m services.catalog) or under gunicorn -k tornado."""
