"""Provider batch mode: a batch job's calls are parked as lines of batch files (``parker``), the files are
submitted, polled and their outcomes applied by any live worker (``manager``, through ``provider``)."""
