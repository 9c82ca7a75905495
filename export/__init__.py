"""tfgated.export: fold gates, write TFLite and ONNX, check parity, measure latency."""
