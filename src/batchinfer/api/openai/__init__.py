"""OpenAI-compatible Files and Batches API (``/v1/files``, ``/v1/batches``) over the same flow.

A batch is a job: one flow run of the batch-inference flow, submitted through the app's
``JobBackend``. Its id is ``batch_<flow run id hex>``, so the seed API and this one name the same run.
"""

from batchinfer.api.openai.ids import BATCH_ID_PREFIX, batch_id_of, job_uuid_of
from batchinfer.api.openai.router import mount_openai_api

__all__ = ["BATCH_ID_PREFIX", "batch_id_of", "job_uuid_of", "mount_openai_api"]
