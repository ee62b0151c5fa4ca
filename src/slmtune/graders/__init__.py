"""Graders: OpenAI's grader definitions (``spec``), how they score samples (``grade``), the formula of a multi grader
(``formula``), the text-similarity metrics (``similarity``) and the sandbox python graders run in (``sandbox``).
Used by the reinforcement objective (``training/grpo.py``) and the service's ``/v1/fine_tuning/alpha/graders``."""
