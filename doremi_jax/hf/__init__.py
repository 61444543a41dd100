"""Hugging Face `transformers` checkpoints of our models
(`python -m doremi_jax.export_model`).

llama.py      the model as a `LlamaForCausalLM`: config.json, the weight
              mapping, model.safetensors (written with NumPy, no torch)
tokenizer.py  a SentencePiece model as a `tokenizers` tokenizer.json that
              gives SentencePiece's ids, BOS (id 0) prepended
"""
