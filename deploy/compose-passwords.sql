-- docker-compose.yml only: passwords for the roles deploy/roles.sql made (the compose file's
-- Postgres asks for one). A real installation sets its own, out of version control.
ALTER ROLE ledger_owner PASSWORD 'ledger_owner';
ALTER ROLE ledger_api PASSWORD 'ledger_api';
ALTER ROLE ledger_relay PASSWORD 'ledger_relay';
ALTER ROLE ledger_reader PASSWORD 'ledger_reader';
ALTER ROLE ledger_keys PASSWORD 'ledger_keys';
ALTER ROLE ledger_deliver PASSWORD 'ledger_deliver';
