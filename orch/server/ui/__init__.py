"""The web UI served by the server at <prefix>/ui/ (pages, static files, streams)."""
