-- avwarden records, schema 3: the playbook's alerts and maintenance windows, so both survive a
-- restart (issue 11). Current state, like bookings: a row changes when its alert does; every
-- change is also a logbook entry (alert_changed, alert_notified, playbook_step events).

CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY,  -- the playbook's alert id
    state           TEXT    NOT NULL,     -- raised, acknowledged, resolved
    room            TEXT,
    subject         TEXT    NOT NULL,     -- a device id, 'room r1', 'feed f', 'logbook store'
    fault           TEXT    NOT NULL,     -- the taxonomy's kind: battery_critical, unreachable, …
    class           TEXT    NOT NULL,     -- major, important, general
    raised_us       INTEGER NOT NULL,
    acknowledged_us INTEGER,
    acknowledged_by TEXT,
    resolved_us     INTEGER,
    body            TEXT    NOT NULL,     -- the alert as JSON (playbook::alerts::Alert)
    updated_us      INTEGER NOT NULL
);
CREATE INDEX alerts_open ON alerts (state, raised_us);
CREATE INDEX alerts_raised ON alerts (raised_us);

CREATE TABLE maintenance_windows (
    id       INTEGER PRIMARY KEY,
    until_us INTEGER NOT NULL,
    removed  INTEGER NOT NULL DEFAULT 0,
    body     TEXT    NOT NULL            -- the window as JSON (playbook::alerts::MaintenanceWindow)
);
