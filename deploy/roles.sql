-- booking-ledger: the Postgres roles, made once per cluster by a DBA (a superuser, or a role with
-- CREATEROLE), in the ledger's database:
--     psql -v ON_ERROR_STOP=1 -d ledger -f deploy/roles.sql
-- then give the login roles passwords (\password ledger_api, ...) or your cluster's authentication.
-- It may be run again at any time: it only adds what is missing. `make run` and the tests run it
-- for their own clusters (devstack/postgres.py, devstack/ha.py).
--
-- ledger_owner   owns the schema's tables and functions; migrations run as it (they SET ROLE to
--                it, so DBAs may also run them as themselves once granted it: GRANT ledger_owner TO dba).
-- ledger_api     the API; ledger_relay the relay; ledger_reader replay and verify; ledger_keys
--                `booking-ledger keys`; ledger_deliver `booking-ledger deliver` (webhooks). They own nothing; migrations grant each only what it needs
--                (migrations/versions/0008_roles.py has the table). The sink uses no Postgres.
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['ledger_owner', 'ledger_api', 'ledger_relay', 'ledger_reader', 'ledger_keys', 'ledger_deliver'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r);
        END IF;
    END LOOP;
END
$roles$;

-- The owner creates the ledger's objects in this database's public schema. (From Postgres 15 on,
-- nobody else may create there; on older versions also run: REVOKE CREATE ON SCHEMA public FROM PUBLIC.)
GRANT USAGE, CREATE ON SCHEMA public TO ledger_owner;

-- A database migrated before the roles existed has its objects owned by whoever ran the
-- migrations: hand them to ledger_owner (needs a superuser). Nothing to do in a new database.
DO $adopt$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT c.oid::regclass AS name FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND c.relowner <> 'ledger_owner'::regrole
           -- sequences of identity/serial columns follow their table; extensions keep their objects
           AND NOT EXISTS (SELECT FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO ledger_owner', object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> 'ledger_owner'::regrole
           AND NOT EXISTS (SELECT FROM pg_depend d
                            WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO ledger_owner', object.name);
    END LOOP;
END
$adopt$;
