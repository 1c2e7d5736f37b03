"""OpenVLA in one folder: the policy over either backend (``policy``), the published image chain
and prompt (``preprocess``), action tokens and unnormalisation (``tokens``), finding checkpoints
(``hub``), the native batched model (``native/``) and its check against OpenVLA's remote code
(``check_backend``). Nothing is imported here: torch and transformers load with the backend."""
