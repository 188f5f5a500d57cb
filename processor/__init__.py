"""The processor: stream entries to stored events and exact daily aggregates."""
