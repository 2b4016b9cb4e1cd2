-- avwarden records, schema 2: bookings, self-test verdicts and the jobs the schedule ran, so
-- that all three survive a restart (issue 9). Unlike the logbook these are current state:
-- a booking row changes when the booking does; each change is also a logbook entry.

CREATE TABLE bookings (
    id         TEXT    PRIMARY KEY,
    room       TEXT    NOT NULL,
    start_us   INTEGER NOT NULL,
    end_us     INTEGER NOT NULL,
    status     TEXT    NOT NULL,    -- confirmed, tentative, cancelled
    source     TEXT    NOT NULL,    -- 'api' or 'feed:<id>'
    body       TEXT    NOT NULL,    -- the booking as JSON (model::Booking)
    updated_us INTEGER NOT NULL
);
CREATE INDEX bookings_room_start ON bookings (room, start_us);
CREATE INDEX bookings_source ON bookings (source);

CREATE TABLE verdicts (
    id          INTEGER PRIMARY KEY,
    room        TEXT    NOT NULL,
    booking     TEXT,
    kind        TEXT    NOT NULL,   -- full, self_test, recheck, manual
    readiness   TEXT    NOT NULL,   -- ready, degraded, not_ready
    finished_us INTEGER NOT NULL,
    body        TEXT    NOT NULL    -- the verdict as JSON (model::Verdict)
);
CREATE INDEX verdicts_booking ON verdicts (booking, finished_us);
CREATE INDEX verdicts_room ON verdicts (room, finished_us);

-- A job of the plan that has run (or was given up as missed): never run again.
CREATE TABLE jobs_done (
    booking   TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    at_us     INTEGER NOT NULL,     -- the instant it was planned for
    ran_us    INTEGER NOT NULL,
    outcome   TEXT    NOT NULL,     -- ran, missed, failed
    PRIMARY KEY (booking, kind, at_us)
) WITHOUT ROWID;
