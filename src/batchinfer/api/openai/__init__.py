"""OpenAI-compatible Files and Batches API (``/v1/files``, ``/v1/batches``) over the same flow.

A batch is a job: one flow run of the batch-inference flow, submitted through the app's
``JobBackend``. Its id is ``batch_<flow run id hex>``, so the seed API and this one name the same run.
"""
