//! Telnet (RFC 854/855) option negotiation as a byte-at-a-time state machine, for servers such
//! as Biamp's TTP server that start negotiating the moment a client connects
//! (protocols.md §4.1, "Telnet negotiation quirk").
//!
//! This module owns separating negotiation from data and the refusal policy: avwarden is a raw
//! TCP client and refuses every option (`IAC DO x` → `IAC WONT x`, `IAC WILL x` → `IAC DONT x`).
//! It must not do I/O or buffer lines; the protocol codec on top of it does that.

/// Interpret As Command (RFC 854).
pub const IAC: u8 = 0xFF;
pub const DONT: u8 = 0xFE;
pub const DO: u8 = 0xFD;
pub const WONT: u8 = 0xFC;
pub const WILL: u8 = 0xFB;
/// Subnegotiation begin / end (RFC 855).
pub const SB: u8 = 0xFA;
pub const SE: u8 = 0xF0;

/// Subnegotiation bytes skipped at most before the parser gives up on finding `IAC SE` and
/// returns to data; a peer cannot make us buffer (or skip) without bound.
pub const MAX_SUBNEGOTIATION: usize = 1024;

/// A Telnet command seen in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelnetCommand {
    Will(u8),
    Wont(u8),
    Do(u8),
    Dont(u8),
    /// A complete (or abandoned, when over-long) subnegotiation for `option`.
    Subnegotiation {
        option: u8,
        len: usize,
    },
    /// Any other two-byte command (NOP, GA, AYT, …).
    Other(u8),
}

impl TelnetCommand {
    /// The three bytes that encode a negotiation command (servers and simulators send these).
    pub fn encode(self) -> Option<[u8; 3]> {
        match self {
            TelnetCommand::Will(o) => Some([IAC, WILL, o]),
            TelnetCommand::Wont(o) => Some([IAC, WONT, o]),
            TelnetCommand::Do(o) => Some([IAC, DO, o]),
            TelnetCommand::Dont(o) => Some([IAC, DONT, o]),
            _ => None,
        }
    }
}

/// Our answer to a command: refuse every option. `WONT`/`DONT` need no answer (the option is
/// already off, and answering them would start a negotiation loop, RFC 854 "loop prevention").
pub fn refusal(cmd: TelnetCommand) -> Option<[u8; 3]> {
    match cmd {
        TelnetCommand::Do(o) => Some([IAC, WONT, o]),
        TelnetCommand::Will(o) => Some([IAC, DONT, o]),
        _ => None,
    }
}

/// What one input byte turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelnetOutput {
    Data(u8),
    Command(TelnetCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Data,
    Iac,
    Verb(u8),
    SbOption,
    Sb {
        option: u8,
        len: usize,
    },
    SbIac {
        option: u8,
        len: usize,
    },
}

/// Splits a Telnet byte stream into data and commands. Feed it every received byte in order;
/// it keeps its state across reads, so commands split between TCP segments are recognised.
#[derive(Debug, Clone, Default)]
pub struct TelnetParser {
    state: State,
}

impl TelnetParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget a half-seen command (new connection).
    pub fn reset(&mut self) {
        self.state = State::Data;
    }

    pub fn feed(&mut self, b: u8) -> Option<TelnetOutput> {
        match self.state {
            State::Data => {
                if b == IAC {
                    self.state = State::Iac;
                    None
                } else {
                    Some(TelnetOutput::Data(b))
                }
            }
            State::Iac => match b {
                // IAC IAC is a literal 0xFF data byte.
                IAC => {
                    self.state = State::Data;
                    Some(TelnetOutput::Data(IAC))
                }
                WILL | WONT | DO | DONT => {
                    self.state = State::Verb(b);
                    None
                }
                SB => {
                    self.state = State::SbOption;
                    None
                }
                other => {
                    self.state = State::Data;
                    Some(TelnetOutput::Command(TelnetCommand::Other(other)))
                }
            },
            State::Verb(v) => {
                self.state = State::Data;
                let cmd = match v {
                    WILL => TelnetCommand::Will(b),
                    WONT => TelnetCommand::Wont(b),
                    DO => TelnetCommand::Do(b),
                    _ => TelnetCommand::Dont(b),
                };
                Some(TelnetOutput::Command(cmd))
            }
            State::SbOption => {
                self.state = State::Sb { option: b, len: 0 };
                None
            }
            State::Sb { option, len } => {
                if b == IAC {
                    self.state = State::SbIac { option, len };
                    None
                } else if len + 1 >= MAX_SUBNEGOTIATION {
                    // Never terminated: give up and treat what follows as data again.
                    self.state = State::Data;
                    Some(TelnetOutput::Command(TelnetCommand::Subnegotiation {
                        option,
                        len: len + 1,
                    }))
                } else {
                    self.state = State::Sb {
                        option,
                        len: len + 1,
                    };
                    None
                }
            }
            State::SbIac { option, len } => match b {
                SE => {
                    self.state = State::Data;
                    Some(TelnetOutput::Command(TelnetCommand::Subnegotiation {
                        option,
                        len,
                    }))
                }
                // IAC IAC inside a subnegotiation is an escaped 0xFF parameter byte. It counts
                // against the limit like any other, or endless escapes would hide the data.
                _ if len + 1 >= MAX_SUBNEGOTIATION => {
                    self.state = State::Data;
                    Some(TelnetOutput::Command(TelnetCommand::Subnegotiation {
                        option,
                        len: len + 1,
                    }))
                }
                _ => {
                    self.state = State::Sb {
                        option,
                        len: len + 1,
                    };
                    None
                }
            },
        }
    }
}

/// Escape data for sending over Telnet: a literal 0xFF is doubled.
pub fn escape_data(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut TelnetParser, bytes: &[u8]) -> (Vec<u8>, Vec<TelnetCommand>) {
        let mut data = Vec::new();
        let mut cmds = Vec::new();
        for &b in bytes {
            match p.feed(b) {
                Some(TelnetOutput::Data(d)) => data.push(d),
                Some(TelnetOutput::Command(c)) => cmds.push(c),
                None => {}
            }
        }
        (data, cmds)
    }

    /// protocols.md §4.1 vector 0: the server's DOs, and our exact refusal bytes.
    #[test]
    fn vector_0_refuses_every_option() {
        let mut p = TelnetParser::new();
        let (data, cmds) = run(&mut p, b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27");
        assert!(data.is_empty());
        assert_eq!(
            cmds,
            vec![
                TelnetCommand::Do(0x18),
                TelnetCommand::Do(0x20),
                TelnetCommand::Do(0x23),
                TelnetCommand::Do(0x27)
            ]
        );
        let reply: Vec<u8> = cmds.into_iter().filter_map(refusal).flatten().collect();
        assert_eq!(reply, b"\xff\xfc\x18\xff\xfc\x20\xff\xfc\x23\xff\xfc\x27");
    }

    #[test]
    fn will_is_answered_with_dont_and_wont_dont_get_no_answer() {
        assert_eq!(refusal(TelnetCommand::Will(1)), Some([IAC, DONT, 1]));
        assert_eq!(refusal(TelnetCommand::Wont(1)), None);
        assert_eq!(refusal(TelnetCommand::Dont(1)), None);
        assert_eq!(refusal(TelnetCommand::Other(0xF1)), None);
    }

    #[test]
    fn commands_split_across_reads_and_mixed_with_data() {
        let mut p = TelnetParser::new();
        let (d1, c1) = run(&mut p, b"ab\xff");
        let (d2, c2) = run(&mut p, b"\xfb");
        let (d3, c3) = run(&mut p, b"\x01cd\xff\xff");
        assert_eq!(d1, b"ab");
        assert!(c1.is_empty() && d2.is_empty() && c2.is_empty());
        assert_eq!(c3, vec![TelnetCommand::Will(1)]);
        assert_eq!(d3, b"cd\xff");
    }

    #[test]
    fn subnegotiation_is_skipped_and_bounded() {
        let mut p = TelnetParser::new();
        let (d, c) = run(&mut p, b"\xff\xfa\x18\x01\xff\xff\x02\xff\xf0ok");
        assert_eq!(d, b"ok");
        assert_eq!(
            c,
            vec![TelnetCommand::Subnegotiation {
                option: 0x18,
                len: 3
            }]
        );
        let mut long = vec![IAC, SB, 0x18];
        long.extend(std::iter::repeat_n(b'x', MAX_SUBNEGOTIATION + 10));
        let (d, c) = run(&mut p, &long);
        assert_eq!(c.len(), 1);
        assert_eq!(
            d.len(),
            10,
            "bytes after an abandoned subnegotiation are data"
        );
    }

    /// Regression, found by the `telnet_filter` fuzz target
    /// (`crash-4dcf3be84717da956a0aecb920e8a40e80e5acc5`: `IAC SB` and an option, then escaped
    /// bytes): a parameter byte escaped as `IAC x` was not counted against
    /// `MAX_SUBNEGOTIATION`, so a subnegotiation of `IAC IAC` pairs never ended, hid every byte
    /// after it, and reported lengths past the limit.
    #[test]
    fn escaped_bytes_count_against_the_subnegotiation_limit() {
        let mut p = TelnetParser::new();
        let mut bytes = vec![IAC, SB, 0x18];
        for _ in 0..MAX_SUBNEGOTIATION + 10 {
            bytes.extend([IAC, IAC]);
        }
        bytes.extend(b"ok");
        let (d, c) = run(&mut p, &bytes);
        assert_eq!(
            c,
            vec![TelnetCommand::Subnegotiation {
                option: 0x18,
                len: MAX_SUBNEGOTIATION
            }]
        );
        let mut want = vec![IAC; 10];
        want.extend(b"ok");
        assert_eq!(
            d, want,
            "escaped bytes after the abandoned subnegotiation are data"
        );
    }

    #[test]
    fn escape_doubles_iac() {
        assert_eq!(escape_data(b"a\xffb"), b"a\xff\xffb");
    }
}
