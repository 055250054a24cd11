-- The orchestrator's schema. Forward-only; see migrations/README.md.

CREATE TABLE definitions (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    document    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE sagas (
    id               uuid        PRIMARY KEY,
    definition       text        NOT NULL,
    version          integer     NOT NULL,
    state            text        NOT NULL CHECK (state IN ('running', 'compensating', 'suspended', 'completed', 'compensated', 'terminated')),
    revision         bigint      NOT NULL,
    input            jsonb       NOT NULL,
    output           jsonb,
    failure          jsonb,
    -- the machine's per-step state (machine::Step), in definition order
    steps            jsonb       NOT NULL,
    early_signals    jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    deadline         timestamptz,
    -- when the saga's earliest current wait should end; null when it waits for nothing timed
    wait_until       timestamptz,
    history_seq      bigint      NOT NULL,
    idempotency_key  text        UNIQUE,
    request_digest   jsonb,
    FOREIGN KEY (definition, version) REFERENCES definitions (name, version)
);

-- GET /v1/sagas: newest first, keyset on (created_at, id), optionally by state or definition.
CREATE INDEX sagas_created ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_state_created ON sagas (state, created_at DESC, id DESC);
CREATE INDEX sagas_definition_created ON sagas (definition, created_at DESC, id DESC);
-- stuck detection: only sagas that wait
CREATE INDEX sagas_waiting ON sagas (wait_until) WHERE state IN ('running', 'compensating');

CREATE TABLE saga_history (
    saga_id     uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    seq         bigint      NOT NULL,
    at          timestamptz NOT NULL,
    kind        text        NOT NULL,
    step        text,
    attempt     integer,
    command_id  uuid,
    actor       text,
    reason      text,
    data        jsonb       NOT NULL DEFAULT 'null',
    PRIMARY KEY (saga_id, seq)
);

-- Which saga a command belongs to: replies name only the command.
CREATE TABLE commands (
    command_id  uuid PRIMARY KEY,
    saga_id     uuid NOT NULL REFERENCES sagas (id) ON DELETE CASCADE
);
CREATE INDEX commands_saga ON commands (saga_id);

-- Transactional outbox: written with the transition, published and deleted by the relay.
CREATE TABLE outbox (
    id              bigserial   PRIMARY KEY,
    saga_id         uuid        NOT NULL,
    exchange        text        NOT NULL,
    routing_key     text        NOT NULL,
    message_id      uuid        NOT NULL,
    message_type    text        NOT NULL,
    reply_to        text,
    body            jsonb       NOT NULL,
    -- for commands: the attempt's timeout; the relay sets the deadline and arms the timer at publish
    attempt_timeout_ms bigint,
    command_id      uuid,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Durable timers. `key` names the timer within its saga (machine::Timer).
CREATE TABLE timers (
    saga_id  uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    key      text        NOT NULL,
    fire_at  timestamptz NOT NULL,
    PRIMARY KEY (saga_id, key)
);
CREATE INDEX timers_due ON timers (fire_at);
