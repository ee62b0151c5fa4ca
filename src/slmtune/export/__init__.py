"""Export: merge adapters into plain transformers models."""
