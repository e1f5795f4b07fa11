"""The thin client: batch scoring, live streams, benchmarks and evaluation through Triton."""
