#!/usr/bin/env bash
# cutfarm container entry point: one role per container.
#
#   head        Ray head (GCS :6379, dashboard :8265, metrics :8080), then the Serve app from
#               $CUTFARM_SERVE_CONFIG (`serve deploy`); stays in the foreground until stopped.
#   worker      Ray worker joining $RAY_HEAD_ADDRESS (default ray-head:6379); stays in the
#               foreground until stopped.
#   deploy      Wait for the local dashboard, `serve deploy $CUTFARM_SERVE_CONFIG`, exit
#               (ray-cluster.yaml runs it after its own `ray start --head`).
#   serve-config  Print the Serve config that head/deploy deploy (see
#               CUTFARM_SERVE_ENV_FROM_NODE below), exit.
#   standalone  `cutfarm serve` with an embedded Ray in this one container (no workers).
#   anything else runs as a command after the secrets below are loaded: `bash`, `ray status`,
#   `cutfarm render ...`. The Ray cluster launcher starts its containers with `bash`.
#
# Ray token authentication stays on (RAY_AUTH_MODE=token, set in the image). Every node of a
# cluster needs the same token: RAY_AUTH_TOKEN, or a file named by RAY_AUTH_TOKEN_PATH, or
# ~/.ray/auth_token. head/worker/deploy refuse to start without one.
#
# Secrets from files: for NAME in CUTFARM_API_TOKEN CUTFARM_WEBHOOK_SECRET AWS_ACCESS_KEY_ID
# AWS_SECRET_ACCESS_KEY, a set NAME_FILE makes NAME the content of that file.
#
# Node settings (roles that start Ray):
#   CUTFARM_NUM_CPUS        logical CPUs this node offers to Ray (default: detected)
#   CUTFARM_OBJECT_STORE_BYTES  Ray object store size; keep it below /dev/shm's size, or
#                           Ray falls back to a disk-backed store (default: Ray's 30% of RAM)
#   CUTFARM_METRICS_PORT    Prometheus metrics port (default 8080)
#   CUTFARM_DASHBOARD_HOST  dashboard bind address on the head (default 0.0.0.0)
#   CUTFARM_RAY_START_ARGS  extra `ray start` arguments, split on whitespace
#   CUTFARM_STARTUP_TIMEOUT seconds to wait for the dashboard / the head (default 180)
#
# The Serve config's runtime_env.env_vars win over a node's environment for the Serve app.
# CUTFARM_SERVE_ENV_FROM_NODE, a comma-separated list of non-secret CUTFARM_* names (compose:
# CUTFARM_MEDIA_ROOTS,CUTFARM_EXPORT_ROOT), makes head/deploy write this node's values of
# them into every application's env_vars and deploy that copy (/tmp/cutfarm-serve-config.yaml)
# instead: one image-wide serve-config.yaml, per-deployment media roots.
set -Eeuo pipefail

log() { printf 'cutfarm-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 64; }

GCS_PORT=${RAY_GCS_PORT:-6379}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
STARTUP_TIMEOUT=${CUTFARM_STARTUP_TIMEOUT:-180}
SERVE_CONFIG=${CUTFARM_SERVE_CONFIG:-/home/ray/serve-config.yaml}
ROLE_FILE=${CUTFARM_ROLE_FILE:-/tmp/cutfarm-role}
RAY_PID=""
DEPLOY_CONFIG=""

load_secret_files() {
    local name file
    for name in CUTFARM_API_TOKEN CUTFARM_WEBHOOK_SECRET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
        file="${name}_FILE"
        if [[ -n ${!file:-} ]]; then
            [[ -r ${!file} ]] || die "$file=${!file} is not a readable file"
            # Strip the trailing newline that `echo ... > file` leaves behind.
            printf -v "$name" '%s' "$(<"${!file}")"
            export "${name?}"
            unset "$file"
        fi
    done
}

require_ray_token() {
    local mode=${RAY_AUTH_MODE:-}
    if [[ ${mode,,} == disabled ]]; then
        log "WARNING: RAY_AUTH_MODE=disabled: anyone who reaches ports $GCS_PORT/$DASHBOARD_PORT can run code on this cluster"
        return 0
    fi
    if [[ ${mode,,} != token ]]; then
        return 0
    fi
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        return 0
    fi
    if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        [[ -s $RAY_AUTH_TOKEN_PATH && -r $RAY_AUTH_TOKEN_PATH ]] \
            || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing, empty or unreadable"
        return 0
    fi
    [[ -s ${HOME:-/home/ray}/.ray/auth_token ]] && return 0
    die "Ray token authentication is on (RAY_AUTH_MODE=token) but no token was given.
Give every node of the cluster the same token, e.g. RAY_AUTH_TOKEN=\$(openssl rand -hex 32)
in docker/.env, or RAY_AUTH_TOKEN_PATH=/run/secrets/ray_auth_token."
}

# The first folder media root holds exports/ (unless CUTFARM_EXPORT_ROOT says otherwise);
# sources/ is where camera files go. Roots and an export root in S3 need nothing here.
prepare_media_root() {
    local item first="" export_root=${CUTFARM_EXPORT_ROOT:-}
    local -a items dirs=()
    IFS=, read -r -a items <<<"${CUTFARM_MEDIA_ROOTS:-/data/media}"
    for item in "${items[@]}"; do
        item=${item#"${item%%[![:space:]]*}"}
        item=${item%"${item##*[![:space:]]}"}
        if [[ -n $item && ${item:0:5} != [sS]3:// ]]; then
            first=$item
            break
        fi
    done
    [[ -n $first ]] && dirs+=("$first/sources" "$first/exports")
    [[ -n $export_root && ${export_root:0:5} != [sS]3:// ]] && dirs+=("$export_root")
    ((${#dirs[@]})) || return 0
    mkdir -p "${dirs[@]}" 2>/dev/null \
        || log "warning: cannot create ${dirs[*]} (read-only or not owned by $(id -un))"
}

ray_node_args() {
    NODE_ARGS=("--metrics-export-port=${CUTFARM_METRICS_PORT:-8080}")
    if [[ -n ${CUTFARM_NUM_CPUS:-} ]]; then
        NODE_ARGS+=("--num-cpus=$CUTFARM_NUM_CPUS")
    fi
    if [[ -n ${CUTFARM_OBJECT_STORE_BYTES:-} ]]; then
        NODE_ARGS+=("--object-store-memory=$CUTFARM_OBJECT_STORE_BYTES")
    fi
    if [[ -n ${CUTFARM_NODE_LABELS:-} ]]; then
        # Node-local media volumes (and so their labels) were removed: say so, once.
        log "warning: CUTFARM_NODE_LABELS is no longer read (node-local media volumes were removed; every node must see the same media roots); put other ray start flags in CUTFARM_RAY_START_ARGS"
    fi
    if [[ -n ${CUTFARM_RAY_START_ARGS:-} ]]; then
        local -a extra
        read -r -a extra <<<"$CUTFARM_RAY_START_ARGS"
        NODE_ARGS+=("${extra[@]}")
    fi
}

http_ok() {
    python - "$1" <<'PY' >/dev/null 2>&1
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
    sys.exit(0 if 200 <= response.status < 300 else 1)
PY
}

tcp_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

ray_alive() {
    [[ -z $RAY_PID ]] || kill -0 "$RAY_PID" 2>/dev/null
}

# Stop this node's Ray: SIGTERM to `ray start --block` drains the node (Serve proxies
# finish in-flight requests; RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, default 30 s) and then
# stops the processes it started. (Not `ray stop`: that kills every Ray process it can see.)
terminate_ray() {
    if [[ -n $RAY_PID ]] && kill -0 "$RAY_PID" 2>/dev/null; then
        kill -TERM "$RAY_PID" 2>/dev/null || true
        wait "$RAY_PID" 2>/dev/null || true
    fi
    RAY_PID=""
}

# On a failed start (die, or a failing command under set -e) do not leave Ray running.
cleanup() {
    terminate_ray
}

wait_for_dashboard() {
    local url="http://127.0.0.1:$DASHBOARD_PORT/api/gcs_healthz" deadline=$((SECONDS + STARTUP_TIMEOUT))
    until http_ok "$url"; do
        ray_alive || die "ray start exited before the dashboard came up (see /tmp/ray/session_latest/logs)"
        ((SECONDS < deadline)) || die "the Ray dashboard did not answer at $url within ${STARTUP_TIMEOUT}s"
        sleep 2
    done
}

# The Serve config to deploy, in DEPLOY_CONFIG: $SERVE_CONFIG itself, or a copy with the
# node's values of the variables named in CUTFARM_SERVE_ENV_FROM_NODE in every application's
# runtime_env.env_vars (secrets refused: the dashboard shows a runtime_env).
effective_serve_config() {
    [[ -r $SERVE_CONFIG ]] || die "Serve config $SERVE_CONFIG not found"
    DEPLOY_CONFIG=$SERVE_CONFIG
    [[ -n ${CUTFARM_SERVE_ENV_FROM_NODE:-} ]] || return 0
    DEPLOY_CONFIG=${CUTFARM_DEPLOY_CONFIG:-/tmp/cutfarm-serve-config.yaml}
    python - "$SERVE_CONFIG" "$DEPLOY_CONFIG" <<'PY' || die "no Serve config written to $DEPLOY_CONFIG"
import os
import sys

import yaml

source, target = sys.argv[1:3]
names = [n.strip() for n in os.environ["CUTFARM_SERVE_ENV_FROM_NODE"].split(",") if n.strip()]
for name in names:
    if (not name.startswith("CUTFARM_") or name.endswith("_FILE")
            or name in ("CUTFARM_API_TOKEN", "CUTFARM_WEBHOOK_SECRET")):
        sys.exit(f"cutfarm-entrypoint: error: CUTFARM_SERVE_ENV_FROM_NODE: {name} is not a "
                 "non-secret CUTFARM_* setting (secrets stay in the node's environment)")
    if not os.environ.get(name):
        sys.exit(f"cutfarm-entrypoint: error: CUTFARM_SERVE_ENV_FROM_NODE names {name}, "
                 "which this node does not set")
with open(source, encoding="utf-8") as f:
    config = yaml.safe_load(f)
for app in config.get("applications") or []:
    env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env.update({name: os.environ[name] for name in names})
with open(target, "w", encoding="utf-8") as f:
    f.write(f"# {source} with this node's {', '.join(names)} (CUTFARM_SERVE_ENV_FROM_NODE)\n")
    yaml.safe_dump(config, f, sort_keys=False)
PY
}

deploy_serve() {
    effective_serve_config
    wait_for_dashboard
    log "deploying $DEPLOY_CONFIG"
    serve deploy --address "http://127.0.0.1:$DASHBOARD_PORT" "$DEPLOY_CONFIG"
}

stop_ray() {
    trap - TERM INT
    log "stopping Ray (draining this node first)"
    terminate_ray
    exit 0
}

# `ray start --block` in the background, so that SIGTERM (docker stop) reaches it through
# stop_ray, and the container exits when Ray's own processes die.
start_ray_blocking() {
    trap stop_ray TERM INT
    trap cleanup EXIT
    ray start "$@" --block &
    RAY_PID=$!
}

wait_for_ray() {
    local rc=0
    wait "$RAY_PID" || rc=$?
    log "Ray exited with status $rc"
    exit "$rc"
}

role_head() {
    require_ray_token
    prepare_media_root
    ray_node_args
    start_ray_blocking --head --port="$GCS_PORT" \
        --dashboard-host="${CUTFARM_DASHBOARD_HOST:-0.0.0.0}" --dashboard-port="$DASHBOARD_PORT" \
        "${NODE_ARGS[@]}"
    deploy_serve
    log "Serve application deployed; API on port 8000, dashboard on port $DASHBOARD_PORT"
    wait_for_ray
}

role_worker() {
    require_ray_token
    local address=${RAY_HEAD_ADDRESS:-ray-head:$GCS_PORT} deadline=$((SECONDS + STARTUP_TIMEOUT))
    local host=${address%:*} port=${address##*:}
    log "waiting for the Ray head at $address"
    until tcp_open "$host" "$port"; do
        ((SECONDS < deadline)) || die "the Ray head at $address did not answer within ${STARTUP_TIMEOUT}s"
        sleep 2
    done
    ray_node_args
    start_ray_blocking --address="$address" "${NODE_ARGS[@]}"
    wait_for_ray
}

main() {
    load_secret_files
    local role=${1:-head}
    case $role in
        head | worker | standalone) printf '%s\n' "$role" >"$ROLE_FILE" 2>/dev/null || true ;;
    esac
    case $role in
        head) role_head ;;
        worker) role_worker ;;
        deploy)
            require_ray_token
            deploy_serve
            ;;
        serve-config)
            effective_serve_config
            cat "$DEPLOY_CONFIG"
            ;;
        standalone)
            prepare_media_root
            shift
            exec cutfarm serve --host "${CUTFARM_HOST:-0.0.0.0}" --port "${CUTFARM_PORT:-8000}" "$@"
            ;;
        *) exec "$@" ;;
    esac
}

main "$@"
