"""Over-the-air updates: the TUF repository, publishing, and (later) campaigns."""
