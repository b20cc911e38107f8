"""The MATH^2 review queue: per-item review state and versions (``store``) and LLM help (``help``)."""
