"""What the operator uploads: models, inspection, upload bodies, artifacts (local and S3), calibration data, samples,
optimized variants."""
