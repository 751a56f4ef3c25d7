"""vectorfill's Prefect deployments, declared once in ``prefect.yaml`` (packaged with the code):
``prefect deploy --prefect-file deployments/prefect.yaml`` reads it for work pools, and
``vectorfill serve`` serves the same declarations from one machine
(:func:`vectorfill.orchestration.serve.build_deployments`)."""
