"""A/B assignment and statistics in plain Python, shared by notebooks and the web views."""
