"""nanolevels: the four levels of LLM engineering (prompting, RAG, fine-tuning, pretraining)."""
