"""r1ft: fine-tune DeepSeek-R1-Distill-Qwen-1.5B into a better math and science reasoner on rented GPUs."""

__version__ = "0.1.0"
