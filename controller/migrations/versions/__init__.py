"""One module per schema revision, oldest first: 0001 is the whole schema as it was before migrations existed."""
