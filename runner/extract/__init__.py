"""Responses into pages of records: the reader, one paginator per style, prefetch."""
