"""What Prefect knows a job by: the flow's name and the deployment a runner serves it under."""

DEPLOYMENT_NAME = "batchinfer"
FLOW_NAME = "batch-inference"  # the @flow name in flows/batch_job.py
