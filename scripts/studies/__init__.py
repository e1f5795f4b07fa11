"""Research studies (evidence, image score, projection dimension) behind BENCHMARKS.md and docs/."""
