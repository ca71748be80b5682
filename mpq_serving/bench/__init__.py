"""Benchmarks behind `mpq bench`: kernel roofline (`kernels`) and an OpenAI-client load generator (`serve`)."""
