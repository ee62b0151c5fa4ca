"""The hosted service: the OpenAI-compatible fine-tuning API (`slmtune serve`), its workers and the web console."""
