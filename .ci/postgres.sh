# Debian's PostgreSQL for the tests marked `postgres` (MLflow and Prefect state on a real
# server): install it, start the first cluster, add a role that may create databases, and export
# SYSTEMHEALER_TEST_POSTGRES. Sourced by .ci/run; if anything fails, those tests are skipped.
setup_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null || return 1
  fi
  local cluster version name port status
  cluster=$(pg_lsclusters -h | head -1)
  if [ -z "$cluster" ]; then
    pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -1)" main >/dev/null || return 1
    cluster=$(pg_lsclusters -h | head -1)
  fi
  read -r version name port status _ <<<"$cluster"
  # Listens on localhost only (Debian's default); started here, stopped with the machine.
  [ "$status" = online ] || pg_ctlcluster "$version" "$name" start || return 1
  su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -q" <<'SQL' || return 1
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'systemhealer') THEN
    CREATE ROLE systemhealer LOGIN PASSWORD 'systemhealer' CREATEDB;
  END IF;
END $$;
SQL
  export SYSTEMHEALER_TEST_POSTGRES="postgresql://systemhealer:systemhealer@127.0.0.1:$port/postgres"
}
setup_postgres || echo "no PostgreSQL server: the tests marked 'postgres' will be skipped" >&2
