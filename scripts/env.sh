# Shared settings for the scripts (sourced, not run).
# Expensive builds live outside the clone, so a fresh clone (and CI) reuses them.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/optikon/target}"
export OPTIKON_TOOLS="${OPTIKON_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/optikon/bin}"
export OPTIKON_BIN_DIR="$CARGO_TARGET_DIR/debug"

require_toolchains() {
  local missing=()
  command -v cargo >/dev/null 2>&1 || missing+=("cargo (Rust, https://rustup.rs)")
  command -v go >/dev/null 2>&1 || missing+=("go (1.26+)")
  if ((${#missing[@]})); then
    echo "missing toolchains: ${missing[*]}" >&2
    exit 1
  fi
}
