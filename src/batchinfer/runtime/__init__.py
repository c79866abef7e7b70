"""What runs inside a job's flow run: the phases (``JobRun``), chunk executors (threads, Dask),
cancellation, deadline, model limits, reporting."""
