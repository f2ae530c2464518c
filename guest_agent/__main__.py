"""``python -m guest_agent [CONFIG]``: serve the agent on all guest interfaces.

Importing the app (FastAPI, llama.cpp, FAISS, numpy) is most of the agent's
start-up; it happens first, while cloud-init may still be writing the config. Before
it, ``llama_build.load`` picks llama.cpp's CPU backend (TCG guests get their own).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from guest_agent import llama_build

llama_build.load()  # before anything imports llama_cpp (the app below does)

import uvicorn  # noqa: E402
from uvicorn.config import LOGGING_CONFIG  # noqa: E402

from guest_agent.app import create_app, wait_for_config  # noqa: E402
from guest_agent.protocol import AGENT_CONFIG_PATH  # noqa: E402
from guest_agent.protocol.redaction import RedactingFilter  # noqa: E402

# The agent unit's RuntimeDirectory, which somnus-identity.path watches.
IDENTITY_DIR = Path("/run/somnus-agent")


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else AGENT_CONFIG_PATH)
    config = wait_for_config(path)
    # 0.0.0.0 inside the guest: only QEMU's loopback port forward on the host reaches it.
    uvicorn.run(create_app(config, config_path=path,
                           identity_dir=IDENTITY_DIR), host="0.0.0.0", port=config.port,
                log_level="info", log_config=redacted_logging())


def redacted_logging() -> dict[str, Any]:
    """uvicorn's logging, plus the agent's own lines, every handler passing the secret
    redaction (the journal keeps what the agent prints)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactingFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["loggers"]["guest_agent"] = {"handlers": ["default"], "level": "INFO",
                                        "propagate": False}
    return config


if __name__ == "__main__":
    main()
