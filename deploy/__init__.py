"""Deployment: the nginx front (serve.py), container files and scrape configs."""
