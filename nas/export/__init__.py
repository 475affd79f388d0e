"""What a network becomes after training: an ONNX or TorchScript file, checked against PyTorch."""
