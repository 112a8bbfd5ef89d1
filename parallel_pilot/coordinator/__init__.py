"""The coordinator: FastAPI app, services that own job and lease logic, the reaper."""
