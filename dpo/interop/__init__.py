"""Weights and files from elsewhere: the Hugging Face checkpoint layout (both ways), our safetensors reader and
writer, hub and dataset downloads, GGUF import, and the byte-level BPE that reads Hugging Face tokenizer files.
Nothing here runs inside a training step; the core calls it to load and save."""
