"""Benchmarks of flask-kaizen-webhooks against baselines measured in the same run."""
