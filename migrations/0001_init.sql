-- avwarden records, schema 1: the hash-chained logbook, the equipment archive, counters.
-- Applied in one transaction by src/records/store.rs; PRAGMA user_version records it.

-- Append-only: the triggers below refuse UPDATE and DELETE. Each entry holds the hash of the
-- one before (see src/records/logbook.rs for the exact encoding).
CREATE TABLE logbook (
    seq       INTEGER PRIMARY KEY,  -- 1, 2, 3 … without gaps: the chain order
    at_us     INTEGER NOT NULL,     -- when it happened: microseconds since the Unix epoch, UTC
    kind      TEXT    NOT NULL,     -- open vocabulary: fault_raised, maintenance, …
    room      TEXT,
    device    TEXT,
    booking   TEXT,
    actor     TEXT    NOT NULL,     -- 'system' or 'person:<name>'
    message   TEXT    NOT NULL,
    data      TEXT    NOT NULL,     -- canonical JSON (sorted keys, no whitespace)
    prev_hash BLOB    NOT NULL,     -- hash of entry seq-1; 32 zero bytes for entry 1
    hash      BLOB    NOT NULL      -- SHA-256, see logbook.rs
);
CREATE INDEX logbook_at ON logbook (at_us);
CREATE INDEX logbook_device_at ON logbook (device, at_us);
CREATE INDEX logbook_kind_at ON logbook (kind, at_us);

CREATE TRIGGER logbook_no_update BEFORE UPDATE ON logbook
BEGIN SELECT RAISE(ABORT, 'the logbook is append-only'); END;
CREATE TRIGGER logbook_no_delete BEFORE DELETE ON logbook
BEGIN SELECT RAISE(ABORT, 'the logbook is append-only'); END;

-- One record per device: what it says about itself, what its profile says, what a technician
-- set. Every change to a row is also written to the logbook in the same transaction.
CREATE TABLE equipment (
    device            TEXT PRIMARY KEY,
    room              TEXT,
    profile           TEXT,
    kind              TEXT,             -- projector, mic, dsp, hvac, display
    profile_vendor    TEXT,
    profile_family    TEXT,
    manufacturer      TEXT,             -- from the device (PJLink INF1, …)
    model             TEXT,             -- from the device (PJLink INF2, Shure MODEL, …)
    name              TEXT,
    serial            TEXT,             -- from the device (PJLink SNUM, ESC/VP21 SNO, …)
    firmware          TEXT,
    identity_extra    TEXT    NOT NULL DEFAULT '{}',  -- replacement lamp/filter models, class, …
    lamp_life_hours   REAL,
    filter_life_hours REAL,
    function          TEXT,             -- set by a technician (config or API) from here on
    location          TEXT,
    storage_location  TEXT,
    install_date      TEXT,             -- YYYY-MM-DD
    supplier          TEXT,
    warranty_end      TEXT,             -- YYYY-MM-DD
    service_contract  TEXT,
    operation_notes   TEXT,
    maintenance_notes TEXT,
    first_seen_us     INTEGER NOT NULL,
    updated_us        INTEGER NOT NULL
);

-- Current value of each counter; since_service = value - baseline (baseline moves on a
-- maintenance entry).
CREATE TABLE counters (
    device     TEXT    NOT NULL,
    name       TEXT    NOT NULL,        -- lamp.1.hours, filter.hours, power_cycles, …
    value      REAL    NOT NULL,
    baseline   REAL    NOT NULL DEFAULT 0,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (device, name)
) WITHOUT ROWID;

-- Every change of a counter, for the monthly report. reset = 1 starts a new series (the unit
-- was swapped): the next value is a starting point, not an increment.
CREATE TABLE counter_samples (
    device TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    at_us  INTEGER NOT NULL,
    value  REAL    NOT NULL,
    reset  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX counter_samples_key ON counter_samples (device, name, at_us);
