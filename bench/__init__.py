"""fleet's benchmark: fleet against Node cluster + Express, gunicorn and waitress (see README.md)."""
