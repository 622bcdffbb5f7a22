"""The words engines: a causal LM that writes one token at a time and shows its odds (next_token.py)."""
