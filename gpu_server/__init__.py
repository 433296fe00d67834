"""FIKIT GPU server: owns every CUDA context and executes the calls its clients forward."""
