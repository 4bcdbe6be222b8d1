"""The model's way out: ONNX export, the MLflow pyfunc that takes photos, the registry gate, model cards."""
