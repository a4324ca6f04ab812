#!/bin/sh
# The compose cluster's PostgreSQL, as PG_ROLE says:
#   primary  initialises the cluster on first start (roles cpis and replicator
#            with the passwords of the init step, database cpis, a replication
#            slot for the standby), TLS with the init step's certificate, and
#            every commit waits for the synchronous standby "standby1"
#   standby  on first start copies the primary (pg_basebackup over TLS), then
#            streams from it; `SELECT pg_promote()` makes it the primary
# Secrets come from /secrets (the init step: init-secrets.sh). Runs postgres
# as the postgres user, as PID 1.
set -eu
: "${PG_ROLE:?PG_ROLE must be primary or standby}"
PRIMARY_HOST=${PG_PRIMARY_HOST:-postgres-primary}
TLS=/var/lib/postgresql/tls

# HOME too: libpq looks for client certificates under it.
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "$@"; }

for file in ca.pem postgres.pem postgres.key db-password replication-password; do
  [ -s "/secrets/$file" ] || { echo "postgres: /secrets/$file is missing: run the init step first (README, Containers)" >&2; exit 64; }
done
# PostgreSQL insists that its key is the server user's and private.
install -d -o postgres -g postgres -m 0700 "$TLS"
install -o postgres -g postgres -m 0644 /secrets/ca.pem /secrets/postgres.pem "$TLS/"
install -o postgres -g postgres -m 0600 /secrets/postgres.key "$TLS/"
printf '*:*:*:replicator:%s\n' "$(cat /secrets/replication-password)" > "$TLS/pgpass"
chown postgres:postgres "$TLS/pgpass" && chmod 0600 "$TLS/pgpass"
install -d -o postgres -g postgres -m 0700 "$PGDATA"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

tls_settings="ssl = on
ssl_cert_file = '$TLS/postgres.pem'
ssl_key_file = '$TLS/postgres.key'
ssl_ca_file = '$TLS/ca.pem'"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  case "$PG_ROLE" in
  primary)
    as_postgres initdb -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --no-locale >/dev/null
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres \
      -v db_password="$(cat /secrets/db-password)" -v replication_password="$(cat /secrets/replication-password)" <<'SQL'
CREATE ROLE cpis LOGIN PASSWORD :'db_password';
CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'replication_password';
CREATE DATABASE cpis OWNER cpis;
SELECT pg_create_physical_replication_slot('standby1');
SQL
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
max_connections = 200
wal_level = replica
max_wal_senders = 8
max_replication_slots = 8
$tls_settings
# From the first commit on, a commit waits until the standby has it too.
synchronous_standby_names = 'standby1'
CONF
    cat >> "$PGDATA/pg_hba.conf" <<'HBA'
hostssl cpis        cpis       all scram-sha-256
hostssl replication replicator all scram-sha-256
HBA
    ;;
  standby)
    # The primary may still be initialising: wait until it answers. Each try is
    # bounded: a name looked up before the network's DNS knows it can hang for
    # tens of seconds in the resolver's retries (pg_isready -t does not cover it).
    until timeout 3 pg_isready -q -h "$PRIMARY_HOST" -p 5432 -U replicator -d replication; do sleep 0.5; done
    as_postgres env PGPASSFILE="$TLS/pgpass" pg_basebackup -D "$PGDATA" -X stream -S standby1 -c fast \
      -d "host=$PRIMARY_HOST user=replicator sslmode=verify-full sslrootcert=$TLS/ca.pem"
    cat >> "$PGDATA/postgresql.conf" <<CONF
$tls_settings
cluster_name = 'standby1'
primary_conninfo = 'host=$PRIMARY_HOST user=replicator passfile=$TLS/pgpass sslmode=verify-full sslrootcert=$TLS/ca.pem application_name=standby1'
primary_slot_name = 'standby1'
# Promoted, it has no standby of its own: its commits must not wait for one.
synchronous_standby_names = ''
CONF
    as_postgres touch "$PGDATA/standby.signal"
    ;;
  *) echo "postgres: PG_ROLE must be primary or standby, not $PG_ROLE" >&2; exit 64 ;;
  esac
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql postgres -D "$PGDATA"
