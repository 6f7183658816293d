# Sourced by the container scripts: pick docker where a Docker engine answers, else podman.
# Sets ENGINE (docker or podman) and COMPOSE (the matching compose command, as an array).
if docker info >/dev/null 2>&1; then
  ENGINE=docker
  COMPOSE=(docker compose)
elif command -v podman >/dev/null 2>&1; then
  ENGINE=podman
  if command -v podman-compose >/dev/null 2>&1; then
    COMPOSE=(podman-compose)
  else
    COMPOSE=(podman compose)
  fi
else
  echo "error: no Docker engine answers and podman is not installed" >&2
  exit 1
fi
