"""Request-path features for routing: prompt statistics, hashed n-grams, sentence embeddings."""
