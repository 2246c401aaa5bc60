#!/usr/bin/env bash
# Build pgvector 0.8 from Debian trixie's source package and install it into this machine's
# PostgreSQL (default: the newest installed major, e.g. 15). Idempotent: does nothing when the
# server already offers vector >= 0.8.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-$(ls /usr/lib/postgresql | sort -n | tail -1)}"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
CONTROL="/usr/share/postgresql/${PG_MAJOR}/extension/vector.control"
SRC_LIST=/etc/apt/sources.list.d/recsys-trixie-src.sources
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

installed_version() {
  [ -f "$CONTROL" ] && sed -n "s/^default_version = '\(.*\)'/\1/p" "$CONTROL" || true
}

case "$(installed_version)" in
  0.8.*|0.9.*|[1-9].*) echo "pgvector $(installed_version) already installed for PostgreSQL ${PG_MAJOR}"; exit 0 ;;
esac

if [ ! -f "$SRC_LIST" ]; then
  $SUDO tee "$SRC_LIST" >/dev/null <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "postgresql-server-dev-${PG_MAJOR}" make gcc dpkg-dev >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq --download-only pgvector >/dev/null 2>&1 || apt-get source --download-only pgvector
dpkg-source -x --no-check pgvector_*.dsc src >/dev/null
cd src
make -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
$SUDO make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "pgvector $(installed_version) installed for PostgreSQL ${PG_MAJOR}"
