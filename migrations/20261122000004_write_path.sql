-- The write path (docs/benchmarks.md, "Optimisations"): what each step costs PostgreSQL.
--
-- History, commands and timers keep their saga's id without a foreign key. Only the engine writes
-- them, always for a saga that its own statement inserts or that its transaction holds locked
-- (sagas are never deleted). Each row's foreign-key check was a query of its own that took
-- KEY SHARE on a saga row the transaction already held FOR NO KEY UPDATE: a multixact per step.
ALTER TABLE saga_history DROP CONSTRAINT saga_history_saga_id_fkey;
ALTER TABLE commands DROP CONSTRAINT commands_saga_id_fkey;
ALTER TABLE timers DROP CONSTRAINT timers_saga_id_fkey;

-- Room on each page for a saga's next versions, so that its steps are HOT updates (heap-only: no
-- index entry) from the first one on. It applies to pages written from now on.
ALTER TABLE sagas SET (fillfactor = 80);
