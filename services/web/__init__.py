"""web: the Flask app, served by gunicorn (gevent workers by default)."""
