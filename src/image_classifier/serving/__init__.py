"""The model server: SageMaker's hosting contract (`GET /ping`, `POST /invocations`) over Flask."""
