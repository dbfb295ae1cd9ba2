-- The W3C traceparent of the call that committed the event, so the relay continues its
-- trace without decoding the envelope ('' when the call was not traced).
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
