"""Models leaving featx: ONNX graphs with their preprocessing recipe and model card."""
