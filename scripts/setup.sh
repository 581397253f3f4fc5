#!/usr/bin/env bash
# Set up everything petray needs on a fresh Debian machine, idempotently.
#   scripts/setup.sh run    Debian peers for the demo (DCMTK, Orthanc) + the virtualenv
#   scripts/setup.sh test   also dicom3tools, Chromium and a PostgreSQL answering on 127.0.0.1:5432
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

debian_packages=(dcmtk orthanc)
if [ "$mode" = "test" ]; then
  # prometheus: tests scrape a running gateway with deploy/prometheus.yml (issue 10).
  # orthanc-dicomweb: the STOW-RS destination of the DICOMweb tests (issue 15).
  debian_packages+=(dicom3tools chromium postgresql-client prometheus orthanc-dicomweb)
fi

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
# The Debian package starts Orthanc as a system service on all interfaces; petray's tests and
# demo run their own Orthanc on loopback, so the packaged one is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
  as_root systemctl stop orthanc || true
fi

if [ "$mode" = "test" ]; then
  # CI machines start PostgreSQL before the session; install and start Debian's server if not.
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      apt_install postgresql
    fi
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q "petray-test" "$hba"; then
      # Loopback-only trust for the test database, as on the CI machines.
      as_root sed -i '1i host all all 127.0.0.1/32 trust # petray-test\nhost all all ::1/128 trust # petray-test' "$hba"
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main restart
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null
  fi
  pg_isready -h 127.0.0.1 -p 5432
fi

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin="$candidate"; break
    fi
  done
fi
if [ -z "$python_bin" ]; then
  apt_install python3.11 python3.11-venv
  python_bin=python3.11
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
stamp=".venv/.petray-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing petray and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
log "ready ($mode)"
