-- GET /v1/sagas on a million sagas (docs/operations.md has the plans): one index by creation,
-- one by definition, and a partial index of the live sagas (running, compensating, suspended)
-- that serves the state and stuck filters. Nothing indexes `wait_until`, `updated_at` or `state`
-- itself any more: those change on every step, and an indexed column that changes rules out a
-- HOT update (the step's update then writes an entry into every index). Ascending keys, read
-- backward: rows arrive in `created_at` order, and a descending index would split its pages in
-- half and grow about twice as large.
DROP INDEX sagas_waiting;
DROP INDEX sagas_state_created;
DROP INDEX sagas_created;
DROP INDEX sagas_definition_created;
CREATE INDEX sagas_created ON sagas (created_at, id);
CREATE INDEX sagas_definition_created ON sagas (definition, created_at, id);
CREATE INDEX sagas_live_created ON sagas (created_at, id)
    WHERE state IN ('running', 'compensating', 'suspended');
