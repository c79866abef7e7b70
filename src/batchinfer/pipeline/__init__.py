"""Pure data work on a job's files: prompt sources, parsing, validation into chunks, running one
chunk through an engine, gather. Imports no Prefect (a test says so)."""
