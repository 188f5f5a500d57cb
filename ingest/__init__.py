"""The public edge: validates events and appends them to the Redis stream."""
