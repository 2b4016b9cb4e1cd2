-- avwarden records, schema 4: the alert sinks' cursors and delivery log (issue 11.6). The
-- logbook is the outbox: a sink delivers the alert rows after its cursor, in sequence order,
-- and moves the cursor only after a delivery succeeded (or was refused for good).

CREATE TABLE sink_cursors (
    sink       TEXT    PRIMARY KEY,  -- 'webhook:<name>' or 'mail'
    seq        INTEGER NOT NULL,     -- the last logbook entry this sink is done with
    updated_us INTEGER NOT NULL
);

CREATE TABLE deliveries (
    id      INTEGER PRIMARY KEY,
    sink    TEXT    NOT NULL,
    seq     INTEGER NOT NULL,        -- the logbook entry delivered
    attempt INTEGER NOT NULL,        -- 1 for the first try of this entry by this sink
    at_us   INTEGER NOT NULL,
    outcome TEXT    NOT NULL,        -- delivered, retry, rejected, skipped
    status  INTEGER,                 -- HTTP status or SMTP reply code, when there was one
    reply   TEXT,                    -- the receiver's short answer (SMTP reply line)
    error   TEXT                     -- what went wrong, never a secret
);
CREATE INDEX deliveries_sink ON deliveries (sink, id);
CREATE INDEX deliveries_entry ON deliveries (sink, seq);
