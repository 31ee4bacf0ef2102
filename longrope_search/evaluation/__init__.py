"""Long-context evaluation: documents, perplexity scoring, passkey retrieval."""
