-- Tracing (docs/observability.md): the W3C `traceparent` of the span that started the saga, so
-- that every later dispatch — from any process, after any restart — continues the saga's one
-- trace. NULL when tracing was off at the start (its commands then carry no trace context).
-- Nullable with no default: adding it rewrites nothing, and the running version ignores it.
ALTER TABLE sagas ADD COLUMN trace_context text;
