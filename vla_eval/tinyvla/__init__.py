"""A tiny OpenVLA trained on CPU: scripted-expert demos (demos.py), training (train.py), the CLI (cli.py)."""
