"""Add GGUF models to VMs (``somnus model add``) and choose the one an agent serves."""

from __future__ import annotations

import shlex
from pathlib import Path

from core.errors import GuestError, InvalidInput, NotFound
from guest_agent.protocol import AGENT_CONFIG_PATH
from guest_agent.protocol.gguf import GGUFError, read_metadata
from guest_agent.protocol.models_dir import USER_MODELS_DIR
from orchestrator.ssh import put_file
from orchestrator.vms import VMService

# Edits the agent's config in the guest: model path and id from argv[1:3], file argv[3].
_SET_MODEL_PY = (
    "import json,sys; p=sys.argv[3]; c=json.load(open(p)); m=c.setdefault('model', {}); "
    "m['model_path'], m['model_id'] = sys.argv[1], sys.argv[2]; json.dump(c, open(p, 'w'))"
)


def check_gguf(path: Path) -> dict[str, object]:
    """The file's GGUF metadata, or a one-line error saying what is supported."""
    if not path.is_file():
        raise NotFound(f"no model file at {path}")
    try:
        return dict(read_metadata(path))
    except GGUFError as exc:
        raise InvalidInput(
            f"{path.name} is not a GGUF model ({exc}): only GGUF files are supported; "
            "convert ONNX/safetensors/PyTorch models with llama.cpp's convert scripts"
        ) from exc


def add_model(service: VMService, vm: str, path: Path, use: bool = False,
              timeout_s: float = 300.0) -> str:
    """Copy ``path`` into the VM's model folder; with ``use``, make the agent serve it.

    Returns the model's path inside the guest.
    """
    check_gguf(path)
    record = service.store.get_vm(vm)
    target = service.ssh_target(record)
    remote_tmp = f"/tmp/{path.name}.part"
    guest_path = f"{USER_MODELS_DIR}/{path.name}"
    put_file(target, path, remote_tmp)
    install = (f"sudo install -o somnus-agent -g somnus-agent -m 0644 "
               f"{shlex.quote(remote_tmp)} {shlex.quote(guest_path)} "
               f"&& rm -f {shlex.quote(remote_tmp)}")
    result = service.run(vm, install)
    if result.exit_code != 0:
        raise GuestError(f"cannot install {path.name} in '{vm}': {result.stderr.strip()[:200]}")
    if use:
        switch = (f"sudo /opt/somnus/venv/bin/python -c {shlex.quote(_SET_MODEL_PY)} "
                  f"{shlex.quote(guest_path)} {shlex.quote(path.stem)} {AGENT_CONFIG_PATH} "
                  "&& sudo systemctl restart somnus-agent")
        result = service.run(vm, switch)
        if result.exit_code != 0:
            raise GuestError(f"cannot switch '{vm}' to {path.name}: {result.stderr.strip()[:200]}")
        service.agent(record).wait_model(timeout_s, model_id=path.stem)
    return guest_path
