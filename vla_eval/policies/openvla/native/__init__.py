"""OpenVLA rebuilt without ``trust_remote_code``, decoding a batch of observations per call.

vit.py (featurizers) -> model.py (projector, Llama, batched decoding) -> checkpoint.py
(released safetensors by key mapping) -> backend.py (the OpenVLA policy's model backend);
random_checkpoints.py writes random-weight checkpoints in the released layout; bench.py is
``vla-eval bench-policy``. Imports torch: load it only through the policy factory.
"""
