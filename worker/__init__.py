"""The llorch worker: a llama.cpp model behind a scheduler thread and an HTTP surface."""
