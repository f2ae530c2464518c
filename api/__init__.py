"""The REST control API (FastAPI) over the orchestrator's service layer.

Routes arrive with the REST API issue; they call ``orchestrator.vms.VMService``
exactly as the CLI does, so no logic lives here.
"""
