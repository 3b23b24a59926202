raise RuntimeError("CUDA_VISIBLE_DEVICES is not set")
