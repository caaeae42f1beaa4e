"""seglab benchmarks: side-by-side timings against peer libraries (``python -m benchmarks``)."""
