"""The API's routers, one module per resource; ``create_app`` mounts ``ROUTERS``."""

from __future__ import annotations

from api.routes import (
    artifacts,
    chat,
    collab,
    images,
    operations,
    projects,
    research,
    security,
    sessions,
    system,
    vms,
    web,
)

ROUTERS = [system.public, system.router, vms.router, chat.router, images.router,
           operations.router, sessions.router, projects.router, artifacts.router,
           security.router, research.router, collab.router, web.router]
