//! Telnet negotiation: arbitrary bytes through `TelnetParser`, one byte at a time, the way
//! `TtpDecoder` and the Tesira simulator feed it.
//!
//! Checks, beyond "no panic": the parser never swallows more than a subnegotiation's limit
//! (plus its `IAC SB option` and `IAC SE` framing) without producing an output, so a peer
//! cannot hide data behind an endless subnegotiation; our refusals answer only DO and WILL and
//! never start a loop; and the outputs survive encode → parse: data escaped with
//! `escape_data`, negotiation commands with `TelnetCommand::encode`, other commands as
//! `IAC x` and subnegotiations as `IAC SB option <len bytes> IAC SE` come back unchanged.

use avwarden::codec::telnet::{
    escape_data, refusal, TelnetCommand, TelnetOutput, TelnetParser, DO, DONT, IAC,
    MAX_SUBNEGOTIATION, SB, SE, WILL, WONT,
};

/// Input bytes with no output at most: `IAC SB option`, the body up to the limit (a parameter
/// byte is at most two input bytes, `IAC IAC`), `IAC SE`.
const MAX_SILENT: usize = 3 + 2 * MAX_SUBNEGOTIATION + 2;

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let out = run(data);
    for o in &out {
        if let TelnetOutput::Command(c) = o {
            check_refusal(*c);
        }
    }
    let wire = encode(&out);
    let again = run(&wire);
    assert_eq!(again, out, "re-encoded as {wire:?}");
}

fn run(bytes: &[u8]) -> Vec<TelnetOutput> {
    let mut p = TelnetParser::new();
    let mut out = Vec::new();
    let mut silent = 0usize;
    for &b in bytes {
        match p.feed(b) {
            Some(o) => {
                out.push(o);
                silent = 0;
            }
            None => {
                silent += 1;
                assert!(silent <= MAX_SILENT, "{silent} bytes without an output");
            }
        }
    }
    out
}

fn check_refusal(c: TelnetCommand) {
    match (c, refusal(c)) {
        (TelnetCommand::Do(o), Some(r)) => assert_eq!(r, [IAC, WONT, o]),
        (TelnetCommand::Will(o), Some(r)) => assert_eq!(r, [IAC, DONT, o]),
        (_, None) => {}
        (c, Some(r)) => panic!("{c:?} answered with {r:?}"),
    }
}

/// What a server sends to produce exactly these outputs.
fn encode(out: &[TelnetOutput]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut data = Vec::new();
    for o in out {
        match *o {
            TelnetOutput::Data(b) => {
                data.push(b);
                continue;
            }
            TelnetOutput::Command(c) => {
                wire.extend(escape_data(&std::mem::take(&mut data)));
                match c {
                    TelnetCommand::Will(_)
                    | TelnetCommand::Wont(_)
                    | TelnetCommand::Do(_)
                    | TelnetCommand::Dont(_) => {
                        let bytes = c.encode().expect("negotiation commands encode");
                        assert!(matches!(bytes[1], WILL | WONT | DO | DONT));
                        wire.extend(bytes);
                    }
                    TelnetCommand::Other(x) => wire.extend([IAC, x]),
                    TelnetCommand::Subnegotiation { option, len } => {
                        assert!(c.encode().is_none());
                        assert!(len <= MAX_SUBNEGOTIATION, "subnegotiation of {len}");
                        wire.extend([IAC, SB, option]);
                        wire.extend(std::iter::repeat_n(0u8, len));
                        if len < MAX_SUBNEGOTIATION {
                            wire.extend([IAC, SE]);
                        }
                    }
                }
            }
        }
    }
    wire.extend(escape_data(&data));
    wire
}
