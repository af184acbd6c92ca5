#!/usr/bin/env bash
# MAML Lab's one entry point: sets everything up on a fresh machine, then runs what you ask for.
#   ./dev.sh app [ARGS]     open the lab (python main.py ARGS)
#   ./dev.sh test [ARGS]    run the whole test suite offscreen, then ruff (what CI runs)
#   ./dev.sh cli ARGS       the headless CLI (python -m maml_lab ARGS)
#   ./dev.sh bench SCRIPT   a script from benchmarks/
# The virtual environment lives in .venv and is reused; it is refreshed when pyproject.toml or setup.py change.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MAML_LAB_VENV:-.venv}"
PY="$VENV/bin/python"

log() { printf 'dev.sh: %s\n' "$*" >&2; }

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

ensure_venv() {
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.maml-lab-$(cat pyproject.toml setup.py | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  log "installing dependencies (first run only)"
  "$PY" -m pip install -q --upgrade pip
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if has_gpu; then
      log "NVIDIA GPU found: installing the CUDA build of torch"
      "$PY" -m pip install -q torch
    else
      # Without a GPU, the CPU build: pinned where a local wheel exists, so no multi-GB CUDA download.
      "$PY" -m pip install -q "torch==2.13.0" || {
        log "torch 2.13.0 is not available here; installing the default torch build"
        "$PY" -m pip install -q torch
      }
    fi
  fi
  "$PY" -m pip install -q -e ".[test,bench]" || "$PY" -m pip install -q -e ".[test]"
  rm -f "$VENV"/.maml-lab-*
  touch "$stamp"
}

ensure_qt_libs() {
  # Debian's libraries that Qt's xcb (window) platform needs; installed only when missing and possible.
  [ -n "${DISPLAY:-}" ] || return 0
  # the library list as a whole first: `ldconfig -p | grep -q` under pipefail fails now and then (grep -q exits at
  # the first match, ldconfig then dies of SIGPIPE and the pipeline reports it) and installed the libraries again
  local libs
  libs="$(ldconfig -p 2>/dev/null || true)"
  case "$libs" in *libxcb-cursor.so.0*) return 0 ;; esac
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Qt's X11 libraries"
    apt-get update -qq && apt-get install -y -qq libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 \
      libxcb-keysyms1 libxcb-shape0 libxcb-render-util0 libxcb-image0 libegl1 libgl1 >/dev/null
  else
    log "Qt may need: libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-render-util0"
  fi
}

cmd="${1:-app}"
shift || true
case "$cmd" in
  app)
    ensure_venv
    ensure_qt_libs
    exec "$PY" main.py "$@"
    ;;
  test)
    ensure_venv
    export QT_QPA_PLATFORM=offscreen
    "$PY" -m pytest -q "$@"
    "$VENV/bin/ruff" check .
    ;;
  cli)
    ensure_venv
    exec "$PY" -m maml_lab "$@"
    ;;
  bench)
    ensure_venv
    script="${1:?usage: ./dev.sh bench SCRIPT [ARGS]}"
    shift
    exec "$PY" "benchmarks/${script%.py}.py" "$@"
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
