"""SafeTensors checkpoint to GGUF conversion."""
