"""A job seen from outside its flow run: flow and deployment names, the Prefect job backend, one
table of Prefect states (seed status and OpenAI batch status), job views, recovery, webhooks."""
