"""The one job runner: one arq function (``step.run_step``) runs one typed ``Step`` of any job.

A recipe's units (a chunk of items, an extraction step, a review-help request) each have a ``run`` here in
``UNITS``; the runner owns what they share: resume checks, the timeout, one retry policy, the hand-back on
SIGTERM, the failure mapping, fair share (``store.queue.enqueue_steps``) and, with the watchdog, liveness.
Every LLM call goes through ``workers.meter.job_llm``; ``resources.Resources`` alone builds endpoint clients.
A unit sees the runner only through ``workers.unit`` (the ``Resources`` it gets, the errors it may raise),
so the runner imports the units and no unit imports the runner.
"""
