#!/bin/sh
# Pi Edge Agent installer: puts the agent on a Raspberry Pi as a hardened
# systemd service. Run it from a clone, as root:
#
#   sudo ./install.sh                       # asks for the Blynk token on the terminal
#   sudo ./install.sh --blynk-token TOKEN --enable-i2c
#   sudo ./install.sh --uninstall           # remove the program, keep config and data
#   sudo ./install.sh --purge               # remove everything it put on the machine
#
# Safe to run again: a second run changes nothing and says so; after a
# `git pull` it builds the new release, switches to it and restarts the
# service. `./install.sh --help` lists every option. Docs: docs/install.md.
set -eu

PROG=install.sh
UNIT_NAME=edge-agent.service
USER_NAME=edge-agent
GROUPS_WANTED="gpio i2c"
CREDENTIALS="blynk.token thingspeak.client_id thingspeak.username thingspeak.password"

usage() {
    cat <<'EOF'
Usage: install.sh [OPTIONS]

Installs Pi Edge Agent as the systemd service edge-agent.service:
OS packages (apt), the system user edge-agent (groups gpio, i2c), a release
venv under /var/lib/edge-agent/releases/ with /var/lib/edge-agent/current
pointing at it, /etc/edge-agent/agent.toml (only if absent), credentials in
/etc/credstore/ (0600 root), the unit; checks the config, then enables and
starts the service.

  --blynk-token TOKEN         Blynk device auth token (or $EDGE_AGENT_BLYNK__TOKEN,
                              or asked on the terminal)
  --thingspeak-client-id ID   ThingSpeak MQTT device credentials (or
  --thingspeak-username NAME    $EDGE_AGENT_THINGSPEAK__CLIENT_ID, ..._USERNAME,
  --thingspeak-password PASS    ..._PASSWORD); asked only if the config has [thingspeak]
  --enable-i2c                turn the I2C interface on (raspi-config)
  --enable-1wire              turn the 1-Wire interface on (raspi-config; reboot needed)
  --config-template FILE      copied to agent.toml when there is none
  --ota-key FILE              a public key from `edge-agent ota keygen` (NAME.pub):
                              installed as /etc/edge-agent/ota-signing.pub and
                              named in [ota] trusted_keys, so the device takes
                              only updates signed with its private key
                              (default: examples/pi.toml of the source)
  --source DIR                source tree to build the release from (default: the
                              directory this script is in)
  --wheel FILE                build the release from a pi-edge-agent wheel instead
  --wheelhouse DIR            local wheels for the dependencies (no PyPI needed
  --offline                     with --offline)
  --python PATH               base Python for the venv (default /usr/bin/python3)
  --non-interactive           never prompt (also when there is no terminal)
  --no-apt                    do not install OS packages
  --no-systemd                do not call systemctl (the unit file is still written)
  --root DIR                  install into DIR instead of / (tests, image building):
                              implies --no-apt and --no-systemd; users, groups and
                              ownership are written to DIR/etc/passwd, DIR/etc/group
                              and recorded in DIR/edge-agent-install.plan
  --uninstall                 stop and remove the service and its releases; keep
                              /etc/edge-agent, the credentials and the data
  --purge                     remove everything: service, releases, data, config,
                              credentials and the edge-agent user (asks first)
  -y, --yes                   --purge without asking (needed when there is no terminal)
  -h, --help                  this text
EOF
}

say() { printf '%s\n' "$*"; }
step() { printf '%s\n' "==> $*"; }
fail() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
CHANGES=0
changed() { CHANGES=$((CHANGES + 1)); say "    changed: $*"; }
unchanged() { say "    ok: $*"; }
note() { say "    note: $*"; }

# -- options ---------------------------------------------------------------------

MODE=install
ROOT=""
NO_APT=0
NO_SYSTEMD=0
NON_INTERACTIVE=0
YES=0
PLACEHOLDERS=""
ENABLE_I2C=0
ENABLE_1WIRE=0
SOURCE=""
WHEEL=""
WHEELHOUSE=""
OFFLINE=0
PYTHON=/usr/bin/python3
CONFIG_TEMPLATE=""
OTA_KEY=""
BLYNK_TOKEN=${EDGE_AGENT_BLYNK__TOKEN-}
TS_CLIENT_ID=${EDGE_AGENT_THINGSPEAK__CLIENT_ID-}
TS_USERNAME=${EDGE_AGENT_THINGSPEAK__USERNAME-}
TS_PASSWORD=${EDGE_AGENT_THINGSPEAK__PASSWORD-}
# the agent reads these too: the installer's checks must see only the files
unset EDGE_AGENT_BLYNK__TOKEN EDGE_AGENT_THINGSPEAK__CLIENT_ID EDGE_AGENT_THINGSPEAK__USERNAME \
    EDGE_AGENT_THINGSPEAK__PASSWORD CREDENTIALS_DIRECTORY

need_arg() { [ $# -ge 2 ] || fail "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --blynk-token) need_arg "$@"; BLYNK_TOKEN=$2; shift ;;
        --thingspeak-client-id) need_arg "$@"; TS_CLIENT_ID=$2; shift ;;
        --thingspeak-username) need_arg "$@"; TS_USERNAME=$2; shift ;;
        --thingspeak-password) need_arg "$@"; TS_PASSWORD=$2; shift ;;
        --enable-i2c) ENABLE_I2C=1 ;;
        --enable-1wire) ENABLE_1WIRE=1 ;;
        --config-template) need_arg "$@"; CONFIG_TEMPLATE=$2; shift ;;
        --ota-key) need_arg "$@"; OTA_KEY=$2; shift ;;
        --source) need_arg "$@"; SOURCE=$2; shift ;;
        --wheel) need_arg "$@"; WHEEL=$2; shift ;;
        --wheelhouse) need_arg "$@"; WHEELHOUSE=$2; shift ;;
        --offline) OFFLINE=1 ;;
        --python) need_arg "$@"; PYTHON=$2; shift ;;
        --non-interactive) NON_INTERACTIVE=1 ;;
        -y | --yes) YES=1 ;;
        --no-apt) NO_APT=1 ;;
        --no-systemd) NO_SYSTEMD=1 ;;
        --root) need_arg "$@"; ROOT=$2; shift ;;
        --uninstall) MODE=uninstall ;;
        --purge) MODE=purge ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; fail "unknown option: $1" ;;
    esac
    shift
done

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
if [ -n "$ROOT" ]; then
    NO_APT=1
    NO_SYSTEMD=1
fi

ETC=$ROOT/etc/edge-agent
CONFIG=$ETC/agent.toml
OTA_KEY_FILE=$ETC/ota-signing.pub
PLUGINS=$ETC/plugins.d
CREDSTORE=$ROOT/etc/credstore
STATE=$ROOT/var/lib/edge-agent
UNIT=$ROOT/etc/systemd/system/$UNIT_NAME
DROPIN=$ROOT/etc/systemd/system/$UNIT_NAME.d
PLAN=$ROOT/edge-agent-install.plan
COMMAND=$ROOT/usr/local/bin/edge-agent

TMPDIRS=""
INTERACTIVE=0
cleanup() {
    if [ "$INTERACTIVE" -eq 1 ]; then stty echo </dev/tty 2>/dev/null || true; fi
    for d in $TMPDIRS; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- helpers ---------------------------------------------------------------------

# record an action that --root/--no-systemd does not perform (once)
plan() {
    say "    skipped ($1): $2"
    [ -n "$ROOT" ] || return 0
    [ -e "$PLAN" ] || : >"$PLAN"
    grep -qxF "$2" "$PLAN" || printf '%s\n' "$2" >>"$PLAN"
}

user_exists() {
    if [ -n "$ROOT" ]; then
        [ -f "$ROOT/etc/passwd" ] && grep -q "^$1:" "$ROOT/etc/passwd"
    else
        getent passwd "$1" >/dev/null 2>&1
    fi
}

# ensure_dir PATH MODE OWNER:GROUP
ensure_dir() {
    if [ ! -d "$1" ]; then
        mkdir -p "$1"
        chmod "$2" "$1"
        changed "created $1 (mode $2)"
    elif [ "$(stat -c %a "$1")" != "${2#0}" ]; then
        chmod "$2" "$1"
        changed "mode of $1 set to $2"
    fi
    ensure_owner "$3" "$1"
}

# ensure_owner OWNER:GROUP PATH [-R]; under --root the service user does not
# exist on this host: the chown is recorded in the plan instead
ensure_owner() {
    want_user=${1%%:*}
    want_group=${1#*:}
    if [ -n "$ROOT" ] && [ "$1" != root:root ]; then
        plan "--root" "chown ${3:+$3 }$1 ${2#"$ROOT"}"
        return 0
    fi
    if [ -n "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
        return 0
    fi
    if [ "${3-}" = -R ]; then
        if [ -n "$(find "$2" \( ! -user "$want_user" -o ! -group "$want_group" \) -print 2>/dev/null | head -n 1)" ]; then
            chown -R "$1" "$2"
            changed "owner of $2 (recursively) set to $1"
        fi
    elif [ "$(stat -c %U:%G "$2")" != "$1" ]; then
        chown "$1" "$2"
        changed "owner of $2 set to $1"
    fi
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# a terminal to ask on, even under `curl ... | sh` (stdin is the script then)
if [ "$NON_INTERACTIVE" -eq 0 ] && (exec </dev/tty) 2>/dev/null; then
    INTERACTIVE=1
fi

# ask SECRET|TEXT PROMPT: the answer in ANSWER (empty without a terminal)
ask() {
    ANSWER=""
    [ "$INTERACTIVE" -eq 1 ] || return 0
    # echo off before the prompt shows, so nothing typed ahead is echoed
    if [ "$1" = SECRET ]; then stty -echo </dev/tty 2>/dev/null || true; fi
    printf '%s' "$2" >/dev/tty
    IFS= read -r ANSWER </dev/tty || ANSWER=""
    if [ "$1" = SECRET ]; then
        stty echo </dev/tty 2>/dev/null || true
        printf '\n' >/dev/tty
    fi
}

releases() {
    PYTHONPATH=$RELEASES_PATH "$PYTHON" -m agent.releases --state-dir "$STATE" "$@"
}

# -- where the pieces come from ---------------------------------------------------

SCRIPT_DIR=$(cd "$(dirname "$0")" 2>/dev/null && pwd || echo "")
locate_source() {
    if [ -z "$SOURCE" ] && [ -z "$WHEEL" ]; then
        if [ -n "$SCRIPT_DIR" ] && [ -f "$SCRIPT_DIR/pyproject.toml" ] && [ -d "$SCRIPT_DIR/agent" ]; then
            SOURCE=$SCRIPT_DIR
        else
            fail "no source tree next to this script: run it from a clone, or give --source DIR or --wheel FILE"
        fi
    fi
    if [ -n "$SOURCE" ]; then
        SOURCE=$(cd "$SOURCE" && pwd) || fail "--source $SOURCE: no such directory"
        [ -f "$SOURCE/pyproject.toml" ] || fail "$SOURCE: not a source tree (no pyproject.toml)"
    fi
    if [ -n "$WHEEL" ]; then
        [ -f "$WHEEL" ] || fail "--wheel $WHEEL: no such file"
        WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
    fi
    # the files besides the package: from the source tree, or this script's clone
    FILES_DIR=${SOURCE:-$SCRIPT_DIR}
    UNIT_SRC=$FILES_DIR/systemd/$UNIT_NAME
    [ -f "$UNIT_SRC" ] || fail "$UNIT_SRC: missing (run the installer from a clone)"
    [ -n "$CONFIG_TEMPLATE" ] || CONFIG_TEMPLATE=$FILES_DIR/examples/pi.toml
    [ -f "$CONFIG_TEMPLATE" ] || fail "config template $CONFIG_TEMPLATE: no such file"
    # agent/releases.py runs from the source tree (or the wheel: a zip is importable)
    RELEASES_PATH=${SOURCE:-$WHEEL}
}

# -- platform --------------------------------------------------------------------

check_platform() {
    OS_NAME=unknown
    OS_CODENAME=""
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091 # the host's file, read for its variables
        OS_NAME=$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-$ID}")
        # shellcheck disable=SC1091
        OS_CODENAME=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME-}")
    fi
    ARCH=$(uname -m)
    MODEL=""
    if [ -r /proc/device-tree/model ]; then
        MODEL=$(tr -d '\000' </proc/device-tree/model)
    fi
    say "Pi Edge Agent installer"
    say "    machine: ${MODEL:-not a Raspberry Pi} ($ARCH), $OS_NAME"
    case "$MODEL" in
        "Raspberry Pi"*) ;;
        *) note "not a Raspberry Pi: GPIO and I2C will not exist here (hardware = \"simulated\" works anywhere)" ;;
    esac
    case "$OS_CODENAME" in
        bookworm | trixie) ;;
        *) note "made for Raspberry Pi OS Bookworm or Trixie; ${OS_CODENAME:-this system} is untested" ;;
    esac
    case "$ARCH" in
        aarch64 | armv7l | x86_64) ;;
        armv6l) note "armv6 (Pi Zero W / Pi 1): works, but slowly; the Pi Zero 2 W is the smallest tested" ;;
        *) note "architecture $ARCH is untested" ;;
    esac
    if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
        fail "run as root (sudo ./install.sh), or with --root DIR to install into a directory"
    fi
    if [ "$NO_SYSTEMD" -eq 0 ] && [ ! -d /run/systemd/system ]; then
        fail "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)); use --no-systemd"
    fi
}

check_python() {
    [ -x "$PYTHON" ] || fail "$PYTHON: not found (install python3, or give --python)"
    "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))' ||
        fail "$PYTHON is $("$PYTHON" -V 2>&1); the agent needs Python 3.11 to 3.13"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        fail "$PYTHON has no venv module: apt-get install python3-venv"
    say "    python: $PYTHON ($("$PYTHON" -V 2>&1 | cut -d' ' -f2))"
}

# -- install steps -----------------------------------------------------------------

install_packages() {
    step "OS packages"
    wanted="python3 python3-venv python3-pip"
    if [ "$NO_APT" -eq 0 ] && apt-cache show python3-lgpio >/dev/null 2>&1; then
        wanted="$wanted python3-lgpio"  # Raspberry Pi archive: GPIO on a Pi 5 (and others)
    fi
    missing=""
    for p in $wanted; do
        pkg_installed "$p" || missing="$missing $p"
    done
    if [ -z "$missing" ]; then
        unchanged "installed: $wanted"
        return 0
    fi
    if [ "$NO_APT" -eq 1 ]; then
        say "    skipped (--no-apt or --root): apt-get install$missing"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed"
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -qq --no-install-recommends $missing >/dev/null || fail "apt-get install$missing failed"
    changed "installed$missing"
}

# --root: users and groups go into DIR/etc/passwd and DIR/etc/group
root_next_id() {
    id_try=999
    while cut -d: -f3 "$ROOT/etc/passwd" "$ROOT/etc/group" | grep -qx "$id_try"; do
        id_try=$((id_try - 1))
    done
    echo "$id_try"
}

root_add_member() { # GROUP USER
    tmp=$ROOT/etc/.group.tmp
    awk -F: -v OFS=: -v g="$1" -v u="$2" '
        $1 == g { n = split($4, m, ","); found = 0
                  for (i = 1; i <= n; i++) if (m[i] == u) found = 1
                  if (!found) $4 = ($4 == "" ? u : $4 "," u) }
        { print }' "$ROOT/etc/group" >"$tmp"
    mv "$tmp" "$ROOT/etc/group"
}

in_group() { # USER GROUP
    if [ -n "$ROOT" ]; then
        grep "^$2:" "$ROOT/etc/group" | cut -d: -f4 | tr ',' '\n' | grep -qx "$1"
    else
        id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
    fi
}

group_exists() {
    if [ -n "$ROOT" ]; then
        grep -q "^$1:" "$ROOT/etc/group"
    else
        getent group "$1" >/dev/null 2>&1
    fi
}

create_user() {
    step "system user $USER_NAME (groups: $GROUPS_WANTED)"
    if [ -n "$ROOT" ]; then
        mkdir -p "$ROOT/etc"
        [ -e "$ROOT/etc/passwd" ] || : >"$ROOT/etc/passwd"
        [ -e "$ROOT/etc/group" ] || : >"$ROOT/etc/group"
    fi
    for g in $GROUPS_WANTED; do
        if group_exists "$g"; then
            unchanged "group $g exists"
        elif [ -n "$ROOT" ]; then
            printf '%s:x:%s:\n' "$g" "$(root_next_id)" >>"$ROOT/etc/group"
            plan "--root" "groupadd --system $g"
            changed "group $g created"
        else
            groupadd --system "$g"
            changed "group $g created (not a Pi? Raspberry Pi OS has it)"
        fi
    done
    if user_exists "$USER_NAME"; then
        unchanged "user $USER_NAME exists"
    elif [ -n "$ROOT" ]; then
        uid=$(root_next_id)
        printf '%s:x:%s:\n' "$USER_NAME" "$uid" >>"$ROOT/etc/group"
        printf '%s:x:%s:%s:Pi Edge Agent:/var/lib/edge-agent:/usr/sbin/nologin\n' "$USER_NAME" "$uid" "$uid" \
            >>"$ROOT/etc/passwd"
        plan "--root" "useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home --shell /usr/sbin/nologin $USER_NAME"
        changed "user $USER_NAME created"
    else
        useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "Pi Edge Agent" "$USER_NAME"
        changed "user $USER_NAME created"
    fi
    for g in $GROUPS_WANTED; do
        if in_group "$USER_NAME" "$g"; then
            unchanged "$USER_NAME is in group $g"
        elif [ -n "$ROOT" ]; then
            root_add_member "$g" "$USER_NAME"
            plan "--root" "usermod --append --groups $g $USER_NAME"
            changed "$USER_NAME added to group $g"
        else
            usermod --append --groups "$g" "$USER_NAME"
            changed "$USER_NAME added to group $g"
        fi
    done
}

make_dirs() {
    step "directories"
    ensure_dir "$ETC" 0755 root:root
    ensure_dir "$PLUGINS" 0755 root:root
    ensure_dir "$CREDSTORE" 0700 root:root
    ensure_dir "$STATE" 0750 "$USER_NAME:$USER_NAME"
}

build_release() {
    step "release"
    set -- build
    if [ -n "$WHEEL" ]; then set -- "$@" --wheel "$WHEEL"; else set -- "$@" --source "$SOURCE"; fi
    [ -z "$WHEELHOUSE" ] || set -- "$@" --wheelhouse "$WHEELHOUSE"
    [ "$OFFLINE" -eq 0 ] || set -- "$@" --offline
    set -- "$@" --python "$PYTHON" --progress
    deps=PyPI
    [ -z "$WHEELHOUSE" ] || deps="$WHEELHOUSE and PyPI"
    [ "$OFFLINE" -eq 0 ] || deps="$WHEELHOUSE only"
    say "    building from ${WHEEL:-$SOURCE} (dependencies from $deps) ..."
    out=$(releases "$@") || fail "the release could not be built (above)"
    RELEASE=$(basename "${out#* }")
    [ -z "$ROOT" ] || unroot_release "$STATE/releases/$RELEASE"
    case "$out" in
        built*) changed "release $RELEASE built at ${out#* }" ;;
        *) unchanged "release $RELEASE already built" ;;
    esac
    out=$(releases flip "$RELEASE") || fail "could not switch current to $RELEASE"
    case "$out" in
        changed*)
            RELEASE_CHANGED=1
            previous=${out#changed }
            previous=${previous%% *}
            if [ "$previous" = - ]; then
                changed "current -> releases/$RELEASE"
            else
                changed "current -> releases/$RELEASE (was $previous, kept for a rollback)"
            fi ;;
        *) unchanged "current -> releases/$RELEASE" ;;
    esac
    pruned=$(releases prune --keep 2) || fail "could not prune old releases"
    for r in $pruned; do
        [ "$r" = removed ] || changed "old release $r removed"
    done
    ensure_owner "$USER_NAME:$USER_NAME" "$STATE" -R
    # `sudo edge-agent check|read|plugins` from anywhere
    want=/var/lib/edge-agent/current/bin/edge-agent
    if [ "$(readlink "$COMMAND" 2>/dev/null || true)" = "$want" ]; then
        unchanged "${COMMAND#"$ROOT"} -> $want"
    else
        mkdir -p "$(dirname "$COMMAND")"
        ln -sfn "$want" "$COMMAND.tmp"
        mv -fT "$COMMAND.tmp" "$COMMAND"
        changed "${COMMAND#"$ROOT"} -> $want"
    fi
}

# unroot_release DIR: a venv built under --root DIR names DIR in its scripts'
# shebangs and pyvenv.cfg; the image must start at its real path, so every
# text file that names the root gets the path without it
unroot_release() {
    grep -rlIF -- "$ROOT/" "$1" 2>/dev/null | while IFS= read -r f; do
        awk -v root="$ROOT/" '{ while ((i = index($0, root)) > 0) $0 = substr($0, 1, i - 1) "/" substr($0, i + length(root)); print }' \
            "$f" >"$f.unroot" && chmod --reference="$f" "$f.unroot" && mv "$f.unroot" "$f"
    done
    if grep -rqIF -- "$ROOT/" "$1" 2>/dev/null; then
        fail "the release in $1 still names $ROOT"
    fi
    unchanged "release paths are the final ones (no $ROOT in them)"
}

install_config() {
    step "configuration"
    if [ -e "$CONFIG" ]; then
        unchanged "$CONFIG kept as it is (never overwritten)"
    else
        cp "$CONFIG_TEMPLATE" "$CONFIG.tmp"
        chmod 0640 "$CONFIG.tmp"
        mv "$CONFIG.tmp" "$CONFIG"
        CONFIG_CHANGED=1
        changed "$CONFIG written from $CONFIG_TEMPLATE: edit it for your sensors"
    fi
    if [ -n "$(find "$CONFIG" -perm -o=r -print)" ]; then
        chmod o-rwx "$CONFIG"
        changed "$CONFIG is no longer world-readable"
    fi
    ensure_owner "root:$USER_NAME" "$CONFIG"
}

# install_ota_key: --ota-key FILE in place as $OTA_KEY_FILE, named in [ota] trusted_keys
# check_ota_key: --ota-key must be a public key (checked before anything is changed)
check_ota_key() {
    [ -n "$OTA_KEY" ] || return 0
    [ -f "$OTA_KEY" ] || fail "--ota-key $OTA_KEY: not a file"
    tr -d ' \t\r\n' <"$OTA_KEY" | grep -Eq '^ed25519:[A-Za-z0-9+/]{43}=$' ||
        fail "--ota-key $OTA_KEY: not a public key from 'edge-agent ota keygen' (ed25519:<base64>); never give the private key"
}

install_ota_key() {
    [ -n "$OTA_KEY" ] || return 0
    step "update signing key"
    check_ota_key
    key=$(tr -d ' \t\r\n' <"$OTA_KEY")
    if [ -f "$OTA_KEY_FILE" ] && [ "$(tr -d ' \t\r\n' <"$OTA_KEY_FILE")" = "$key" ]; then
        unchanged "${OTA_KEY_FILE#"$ROOT"} holds this key"
    else
        tmp=$(mktemp "$ETC/.ota-signing.pub.XXXXXX")
        printf '%s\n' "$key" >"$tmp"
        chmod 0644 "$tmp"
        mv "$tmp" "$OTA_KEY_FILE"
        CONFIG_CHANGED=1
        changed "public key installed as ${OTA_KEY_FILE#"$ROOT"}"
    fi
    ensure_owner root:root "$OTA_KEY_FILE"
    runtime=${OTA_KEY_FILE#"$ROOT"}
    if grep -q "^[[:space:]]*trusted_keys[[:space:]]*=.*$runtime" "$CONFIG"; then
        unchanged "$CONFIG trusts it ([ota] trusted_keys)"
    elif grep -q "^[[:space:]]*trusted_keys[[:space:]]*=" "$CONFIG" || config_has ota; then
        note "add \"$runtime\" to [ota] trusted_keys in $CONFIG by hand (it has an [ota] section: not edited)"
    else
        printf '\n[ota]\n# only updates signed with the private key of this public key (docs/ota.md)\ntrusted_keys = ["%s"]\n' \
            "$runtime" >>"$CONFIG"
        CONFIG_CHANGED=1
        changed "$CONFIG: [ota] trusted_keys = [\"$runtime\"]"
    fi
}

# store_credential NAME VALUE: /etc/credstore/NAME, 0600 root, if it differs
store_credential() {
    file=$CREDSTORE/$1
    if [ -f "$file" ] && [ "$(cat "$file")" = "$2" ]; then
        unchanged "credential $1 unchanged"
        return 0
    fi
    tmp=$(umask 077 && mktemp "$CREDSTORE/.$1.XXXXXX")
    printf '%s' "$2" >"$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$file"
    CONFIG_CHANGED=1
    changed "credential $1 stored in ${file#"$ROOT"} (0600 root)"
}

config_has() { grep -q "^[[:space:]]*\[$1\]" "$CONFIG"; }

credentials() {
    step "credentials"
    NO_TOKEN=0
    # only for a service the config has a section for: a credential without
    # its section would be a section missing its other keys
    if config_has blynk; then
        if [ -z "$BLYNK_TOKEN" ] && [ ! -s "$CREDSTORE/blynk.token" ]; then
            ask SECRET "Blynk device auth token (Enter to skip): "
            BLYNK_TOKEN=$ANSWER
        fi
        if [ -n "$BLYNK_TOKEN" ]; then
            store_credential blynk.token "$BLYNK_TOKEN"
        elif [ -s "$CREDSTORE/blynk.token" ]; then
            unchanged "credential blynk.token kept"
        elif grep -q 'REPLACE-WITH' "$CONFIG"; then
            NO_TOKEN=1
            note "no Blynk token yet: give --blynk-token (or EDGE_AGENT_BLYNK__TOKEN) and run install.sh again"
        fi
    elif [ -n "$BLYNK_TOKEN" ]; then
        note "Blynk token not stored: $CONFIG has no [blynk] section"
    fi
    for item in client_id:"$TS_CLIENT_ID":TEXT username:"$TS_USERNAME":TEXT password:"$TS_PASSWORD":SECRET; do
        key=${item%%:*}
        rest=${item#*:}
        value=${rest%:*}
        kind=${rest##*:}
        if ! config_has thingspeak; then
            [ -z "$value" ] || note "ThingSpeak $key not stored: $CONFIG has no [thingspeak] section"
            continue
        fi
        if [ -z "$value" ] && [ ! -s "$CREDSTORE/thingspeak.$key" ]; then
            ask "$kind" "ThingSpeak MQTT $key (Enter to skip): "
            value=$ANSWER
        fi
        if [ -n "$value" ]; then
            store_credential "thingspeak.$key" "$value"
        elif [ -s "$CREDSTORE/thingspeak.$key" ]; then
            unchanged "credential thingspeak.$key kept"
        fi
    done
    for f in "$CREDSTORE"/blynk.* "$CREDSTORE"/thingspeak.*; do
        [ -f "$f" ] || continue
        if [ "$(stat -c %a "$f")" != 600 ]; then
            chmod 0600 "$f"
            changed "mode of ${f#"$ROOT"} set to 0600"
        fi
        ensure_owner root:root "$f"
    done
}

interfaces() {
    [ "$ENABLE_I2C" -eq 1 ] || [ "$ENABLE_1WIRE" -eq 1 ] || return 0
    step "interfaces"
    for which in i2c onewire; do
        if [ "$which" = i2c ]; then [ "$ENABLE_I2C" -eq 1 ] || continue; fi
        if [ "$which" = onewire ]; then [ "$ENABLE_1WIRE" -eq 1 ] || continue; fi
        if [ -n "$ROOT" ]; then
            plan "--root" "raspi-config nonint do_$which 0"
        elif ! command -v raspi-config >/dev/null 2>&1; then
            note "raspi-config not found: enable $which in /boot/firmware/config.txt by hand (docs/install.md)"
        elif [ "$(raspi-config nonint "get_$which" 2>/dev/null || echo 1)" = 0 ]; then
            unchanged "$which is enabled"
        else
            raspi-config nonint "do_$which" 0
            changed "$which enabled"
            [ "$which" = i2c ] || note "1-Wire takes effect after a reboot"
        fi
    done
}

install_unit() {
    step "systemd unit"
    mkdir -p "$(dirname "$UNIT")"
    UNIT_EXISTED=0
    [ ! -f "$UNIT" ] || UNIT_EXISTED=1
    if [ -f "$UNIT" ] && cmp -s "$UNIT_SRC" "$UNIT"; then
        unchanged "${UNIT#"$ROOT"} up to date"
    else
        cp "$UNIT_SRC" "$UNIT.tmp"
        chmod 0644 "$UNIT.tmp"
        mv "$UNIT.tmp" "$UNIT"
        UNIT_CHANGED=1
        changed "${UNIT#"$ROOT"} installed"
    fi
}

check_config() {
    step "edge-agent check"
    creds=$(mktemp -d)
    TMPDIRS="$TMPDIRS $creds"
    # the same credentials the unit's LoadCredential= lines will pass
    for name in $CREDENTIALS; do
        [ ! -f "$CREDSTORE/$name" ] || cp "$CREDSTORE/$name" "$creds/$name"
    done
    PLACEHOLDERS=""
    if out=$(cd / && CREDENTIALS_DIRECTORY=$creds PYTHONDONTWRITEBYTECODE=1 "$STATE/current/bin/python" -m agent check --require-secrets --config "$CONFIG" 2>&1); then
        printf '%s\n' "$out" | sed 's/^/    /'
        PLACEHOLDERS=$(printf '%s\n' "$out" | grep "warning: still the example's" || true)
    else
        printf '%s\n' "$out" >&2
        fail "the configuration above has errors: fix $CONFIG and run install.sh again (the service was not started)"
    fi
}

start_service() {
    step "service"
    if [ "$NO_SYSTEMD" -eq 1 ]; then
        why=--no-systemd
        [ -z "$ROOT" ] || why=--root
        [ "$UNIT_CHANGED" -eq 0 ] || plan "$why" "systemctl daemon-reload"
        if [ "$NO_TOKEN" -eq 1 ]; then
            note "not enabling the service until it has a Blynk token"
            return 0
        fi
        if [ -n "$PLACEHOLDERS" ]; then
            placeholders_note
            return 0
        fi
        plan "$why" "systemctl enable --now $UNIT_NAME"
        if [ "$UNIT_EXISTED" -eq 1 ] && [ $((UNIT_CHANGED + RELEASE_CHANGED + CONFIG_CHANGED)) -gt 0 ]; then
            plan "$why" "systemctl restart $UNIT_NAME"
        fi
        return 0
    fi
    if [ "$UNIT_CHANGED" -eq 1 ]; then
        systemctl daemon-reload
    fi
    if [ "$NO_TOKEN" -eq 1 ]; then
        note "not enabling or starting the service until it has a Blynk token"
        return 0
    fi
    if [ -n "$PLACEHOLDERS" ]; then
        placeholders_note
        return 0
    fi
    if systemctl is-enabled --quiet "$UNIT_NAME"; then
        unchanged "$UNIT_NAME enabled"
    else
        systemctl enable --quiet "$UNIT_NAME"
        changed "$UNIT_NAME enabled (starts at boot)"
    fi
    if systemctl is-active --quiet "$UNIT_NAME"; then
        if [ $((UNIT_CHANGED + RELEASE_CHANGED + CONFIG_CHANGED)) -gt 0 ]; then
            systemctl restart "$UNIT_NAME" || start_failed
            changed "$UNIT_NAME restarted"
        else
            unchanged "$UNIT_NAME running"
        fi
    else
        # Type=notify: returns once the agent has said READY=1
        systemctl start "$UNIT_NAME" || start_failed
        changed "$UNIT_NAME started"
    fi
    say "    status: $(systemctl show --property=StatusText --value "$UNIT_NAME")"
}

# the service is never enabled on the example's values: say which, and what next
placeholders_note() {
    note "not enabling or starting the service: ${CONFIG#"$ROOT"} still holds the example's values:"
    printf '%s\n' "$PLACEHOLDERS" | sed 's/^/        /'
    note "change those lines (the text after — says how), then run: sudo ./install.sh"
}

start_failed() {
    journalctl --unit "$UNIT_NAME" --lines 20 --no-pager >&2 || true
    fail "$UNIT_NAME did not start (its log is above; more: journalctl -u edge-agent)"
}

do_install() {
    locate_source
    check_platform
    check_ota_key
    say "This will:"
    say "    install OS packages: python3-venv, python3-pip (and python3-lgpio where the archive has it)"
    say "    create the system user $USER_NAME in groups: $GROUPS_WANTED"
    say "    build a release from ${WHEEL:-$SOURCE} into ${STATE}/releases/ and point ${STATE}/current at it"
    say "    write $CONFIG from $(basename "$CONFIG_TEMPLATE") only if it does not exist"
    [ -z "$OTA_KEY" ] || say "    install the update signing key $OTA_KEY as $OTA_KEY_FILE and trust it in [ota]"
    say "    keep secrets in $CREDSTORE/ (0600 root), passed to the service with LoadCredential="
    say "    install $UNIT, check the config, enable and start the service"
    [ -z "$ROOT" ] || say "    (into $ROOT: no apt, no systemctl; users and ownership recorded in $PLAN)"
    RELEASE_CHANGED=0
    CONFIG_CHANGED=0
    UNIT_CHANGED=0
    NO_TOKEN=0
    install_packages
    check_python
    create_user
    make_dirs
    build_release
    install_config
    install_ota_key
    credentials
    interfaces
    install_unit
    check_config
    start_service
    say ""
    if [ "$CHANGES" -eq 0 ]; then
        say "$PROG: nothing to change: edge-agent is installed as wanted (release $RELEASE)"
    else
        say "$PROG: done, $CHANGES changes; release $RELEASE"
    fi
    say "    logs:   journalctl -u edge-agent -f"
    say "    status: systemctl status edge-agent"
}

# -- removal ---------------------------------------------------------------------

remove_path() { # PATH WHAT
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        changed "removed ${1#"$ROOT"}${2:+ ($2)}"
    fi
}

confirm_purge() {
    [ "$YES" -eq 0 ] || return 0
    what="${ETC:-/etc/edge-agent} (config, plugins), the credentials in ${CREDSTORE:-/etc/credstore}, ${STATE:-/var/lib/edge-agent} (data, outbox) and the user $USER_NAME"
    if [ "$INTERACTIVE" -ne 1 ]; then
        fail "--purge deletes $what; no terminal to ask on: add --yes to confirm"
    fi
    ask TEXT "--purge deletes $what. Type purge to go on: "
    [ "$ANSWER" = purge ] || fail "not purged (nothing was changed)"
}

do_uninstall() {
    [ "$MODE" != purge ] || confirm_purge
    say "Pi Edge Agent installer: $MODE"
    step "service"
    if [ "$NO_SYSTEMD" -eq 1 ]; then
        why=--no-systemd
        [ -z "$ROOT" ] || why=--root
        [ ! -f "$UNIT" ] || plan "$why" "systemctl disable --now $UNIT_NAME"
    elif [ -f "$UNIT" ]; then
        systemctl disable --now --quiet "$UNIT_NAME" 2>/dev/null || true
        changed "$UNIT_NAME stopped and disabled"
    fi
    remove_path "$UNIT" "the unit"
    if [ "$MODE" = purge ]; then
        remove_path "$DROPIN" "drop-ins"
    fi
    if [ "$NO_SYSTEMD" -eq 0 ] && [ "$CHANGES" -gt 0 ]; then
        systemctl daemon-reload
    fi
    step "program"
    if [ "$(readlink "$COMMAND" 2>/dev/null || true)" = /var/lib/edge-agent/current/bin/edge-agent ]; then
        remove_path "$COMMAND" "the command"
    fi
    remove_path "$STATE/current" "the current link"
    remove_path "$STATE/releases" "every release"
    if [ "$MODE" = uninstall ]; then
        say "    kept: $ETC (config, plugins), $CREDSTORE credentials, $STATE (data), user $USER_NAME"
        say "    (--purge removes them too)"
    else
        step "config, credentials, data"
        remove_path "$ETC" "config and plugins"
        for name in $CREDENTIALS; do
            remove_path "$CREDSTORE/$name" "credential"
        done
        if [ -d "$CREDSTORE" ] && [ -z "$(ls -A "$CREDSTORE")" ]; then
            rmdir "$CREDSTORE"
        fi
        remove_path "$STATE" "data"
        step "user"
        if ! user_exists "$USER_NAME"; then
            unchanged "no user $USER_NAME"
        elif [ -n "$ROOT" ]; then
            for f in passwd group; do
                awk -F: -v OFS=: -v u="$USER_NAME" '
                    $1 == u { next }
                    FILENAME ~ /group$/ { n = split($4, m, ","); out = ""
                        for (i = 1; i <= n; i++) if (m[i] != u) out = (out == "" ? m[i] : out "," m[i])
                        $4 = out }
                    { print }' "$ROOT/etc/$f" >"$ROOT/etc/.$f.tmp"
                mv "$ROOT/etc/.$f.tmp" "$ROOT/etc/$f"
            done
            plan "--root" "userdel $USER_NAME"
            changed "user $USER_NAME removed"
        else
            userdel "$USER_NAME"
            changed "user $USER_NAME removed"
        fi
        say "    kept: groups $GROUPS_WANTED (other software uses them)"
    fi
    say ""
    if [ "$CHANGES" -eq 0 ]; then
        say "$PROG: nothing to remove"
    else
        say "$PROG: $MODE done, $CHANGES changes"
    fi
}

case "$MODE" in
    install) do_install ;;
    uninstall | purge)
        if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then fail "run as root (sudo ./install.sh --$MODE)"; fi
        do_uninstall ;;
esac
