#!/bin/sh
# Mosquitto's entrypoint in docker/compose.yaml: build the password file from the environment at
# every start, then run the broker (it drops root for the image's mosquitto user). No secret is
# stored in the repository or passed in a process's arguments.
#   firegw's user      password from MQTT_FIREGW_PASSWORD (docker/.env)
#   everyone else      users.passwd next to this file (devices, the grid platform), if present,
#                      made with mosquitto_passwd (see docker/README.md)
# MOSQUITTO_CONF_DIR, MOSQUITTO_AUTH_DIR and MOSQUITTO_DATA_DIR move the folders
# (tests/test_docker.py runs this script).
set -eu
conf_dir=${MOSQUITTO_CONF_DIR:-/mosquitto/config}
auth_dir=${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}
data_dir=${MOSQUITTO_DATA_DIR:-/mosquitto/data}
: "${MQTT_FIREGW_PASSWORD:?MQTT_FIREGW_PASSWORD is not set: run docker/init-secrets (see docker/README.md)}"

umask 077
mkdir -p "$auth_dir"
new="$auth_dir/passwd.new"
: > "$new"
if [ -f "$conf_dir/users.passwd" ]; then
  # firegw's entry comes from the environment only
  grep -v '^firegw:' "$conf_dir/users.passwd" >> "$new" || true
fi
printf '%s\n%s\n' "$MQTT_FIREGW_PASSWORD" "$MQTT_FIREGW_PASSWORD" | mosquitto_passwd "$new" firegw >/dev/null
mv "$new" "$auth_dir/passwd"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  # the broker reads these after dropping root (the configuration folder is mounted read-only)
  mkdir -p "$data_dir"
  chown -R mosquitto:mosquitto "$auth_dir" "$data_dir"
fi
echo "mosquitto: password file with $(wc -l < "$auth_dir/passwd") users"

if [ $# -eq 0 ]; then
  set -- /usr/sbin/mosquitto -c "$conf_dir/mosquitto.conf"
fi
exec "$@"
