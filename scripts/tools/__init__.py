"""Operations tools: the GPU check (entry point scripts/gpu_check.sh) and the soak test of a local Triton server."""
