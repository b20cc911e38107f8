"""Skill extraction (papers.md §A stage 1, §B): skill sets from a seed dataset or from the model alone.

One module per phase: ``reader`` (stream the seed rows), ``label``, ``merge``, ``mapping`` (dataset),
``agnostic`` (model only); ``runner`` drives them as time-boxed arq steps on the spine's queue, ``store``
keeps every intermediate in Redis, ``ask`` makes the LLM calls.
"""
