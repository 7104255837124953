"""`edgeeff select`: the largest EfficientNet (or the most accurate) that meets a latency budget."""
