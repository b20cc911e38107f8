"""The one job runner: one arq function (``step.run_step``) runs one typed ``Step`` of any job.

A job's units are a chunk of items (``chunk``), or a phase step or a help request that the job's recipe
implements itself (``workers.unit.register_units``, dispatched by ``step.run_unit``); the runner owns what
they share: resume checks, the timeout, one retry policy, the hand-back on SIGTERM, the failure mapping,
fair share (``store.queue.enqueue_steps``) and, with the watchdog, liveness.
Every LLM call goes through ``workers.meter.job_llm``; ``resources.Resources`` alone builds endpoint clients.
A unit sees the runner only through ``workers.unit`` (the ``Resources`` it gets, the errors it may raise),
so no unit imports the runner, and the runner imports no recipe.
"""
