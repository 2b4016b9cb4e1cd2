//! Kill -9 a process that appends as fast as it can, many times: every entry it was told is
//! durable must be there after reopening, and the chain must verify.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use avwarden::records::logbook;
use avwarden::records::{Store, StoreOptions};

use super::child_command;

/// A small deterministic generator, so a failing round can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut rng = Lcg(0x5eed_cafe);
    let rounds = 20;
    let mut total_acked = 0usize;
    for round in 0..rounds {
        // Every fifth round is killed at once (during start-up, open, migration or WAL
        // recovery); the others after a random number of acknowledgements.
        let target = if round % 5 == 0 {
            0
        } else {
            1 + rng.next(2500) as usize
        };
        let args: Vec<String> = [
            "--db",
            db.to_str().unwrap(),
            "logbook",
            "stress-append",
            "--writers",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = child_command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn appender");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            // Only complete lines count: a line cut by the kill was never fully printed.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line.strip_prefix("ack ") {
                    let seq: u64 = seq.trim().parse().expect("ack number");
                    if tx.send(seq).is_err() {
                        break;
                    }
                }
            }
        });
        let mut acked = Vec::new();
        while acked.len() < target {
            // Bounds a hang only; the appender acknowledges thousands per second.
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(seq) => acked.push(seq),
                Err(e) => {
                    let _ = child.kill();
                    panic!("round {round}: appender stopped acknowledging ({e})");
                }
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "round {round}: the appender was killed");
        reader.join().expect("reader");
        // Acknowledgements printed before the kill are still in the pipe.
        acked.extend(rx.try_iter());

        let store = Store::open(&db, &StoreOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: reopening after kill -9: {e}"));
        let report = logbook::verify(store.connection()).unwrap();
        assert!(
            report.ok(),
            "round {round}: chain broken after kill -9: {:?}",
            report.broken
        );
        let count = logbook::count(store.connection()).unwrap();
        for seq in &acked {
            let e = logbook::get(store.connection(), *seq)
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("round {round}: acknowledged entry {seq} lost ({count} stored)")
                });
            assert_eq!(e.kind, "stress");
        }
        let mut unique = acked.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            acked.len(),
            "round {round}: a sequence number acknowledged twice"
        );
        total_acked += acked.len();
    }
    assert!(
        total_acked > 1000,
        "the appenders were killed before doing real work ({total_acked} acknowledged)"
    );
}
