# Sourced by the scripts that install Debian packages (setup, bench-deps,
# wheel-instructions): `debian_install WHO PACKAGE...` installs them with
# apt-get, as root or through sudo, and says so as WHO.

debian_install() {
    local who="$1"
    shift
    echo "$who: installing $* from Debian"
    as_root "$who" apt-get update -qq
    as_root "$who" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

as_root() {
    local who="$1"
    shift
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "$who: need root (or sudo) to run: $*" >&2; exit 1; fi
}
