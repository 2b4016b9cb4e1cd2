//! Epson ESC/VP21: arbitrary bytes, in arbitrary chunks, through `Escvp21Codec` with a line
//! limit the input picks, and every reply line through every typed parse fn.
//!
//! Checks, beyond "no panic": after the decoder has had its say the buffer never holds more
//! than the line limit, a reply line is non-empty printable ASCII without the prompt and within
//! the limit, every frame survives encode → decode unchanged (what the simulator sends is what
//! the driver reads), and every typed value that parses survives encode → parse.

use avwarden::codec::escvp21::{
    error_code_info, parse_error_code, parse_lamp_hours, parse_mute, parse_power, parse_serial,
    parse_source, reply_value, Escvp21Codec, Frame, Request, CR,
};
use avwarden::codec::ProtocolError;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((&[first, limit], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    // The first byte picks the chunk size, so the fuzzer explores reads split anywhere; the
    // second the line limit (the codec raises anything under 8 to 8).
    let step = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    for mut codec in [
        Escvp21Codec::new(),
        Escvp21Codec::with_max_line(usize::from(limit)),
    ] {
        let max = codec.max_line();
        let mut buf = BytesMut::new();
        for chunk in rest.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(f)) => check_frame(&f, max),
                    Ok(None) => break,
                    Err(ProtocolError::Oversized { limit, got }) => {
                        assert_eq!(limit, max);
                        assert!(got > max);
                    }
                    Err(e) => panic!("escvp21 codec returned {e}"),
                }
            }
            assert!(buf.len() <= max, "buffer holds {} > {max}", buf.len());
        }
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => check_frame(&f, max),
            Ok(None) => assert!(buf.is_empty(), "eof left {} bytes", buf.len()),
            Err(ProtocolError::Oversized { .. }) => {}
            Err(e) => panic!("escvp21 codec at eof returned {e}"),
        }
        let _ = codec.take_skipped();
    }
    // Input codes the driver is configured with go through `Request::source`.
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(r) = Request::source(text) {
            let wire = r.encode();
            assert_eq!(wire.len(), "SOURCE xx\r".len(), "{r:?}");
            assert!(wire[7..9].iter().all(u8::is_ascii_hexdigit));
        }
    }
}

fn check_frame(f: &Frame, max: usize) {
    let Frame::Reply(line) = f else {
        return round_trip(f, max);
    };
    assert!(!line.is_empty() && line.len() <= max, "line {line:?}");
    assert!(
        line.bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b':'),
        "line {line:?}"
    );
    round_trip(f, max);
    check_line(line);
}

/// The bytes a projector (or the simulator) sends for this frame decode to the same frame.
fn round_trip(f: &Frame, max: usize) {
    let wire: Vec<u8> = match f {
        Frame::Colon => b":".to_vec(),
        Frame::Err => b"ERR\r".to_vec(),
        Frame::Reply(line) => [line.as_bytes(), &[CR]].concat(),
    };
    let mut codec = Escvp21Codec::with_max_line(max);
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(codec.decode(&mut buf), Ok(Some(f.clone())), "wire {wire:?}");
    assert!(buf.is_empty());
}

fn check_line(line: &str) {
    for key in ["PWR", "LAMP", "ERR", "SNO", "SOURCE", "MUTE"] {
        if let Ok((v, noise)) = reply_value(line, key) {
            assert!(noise + key.len() < line.len());
            assert_eq!(v, v.trim());
        }
    }
    if let Ok(p) = parse_power(line) {
        assert_eq!(parse_power(&format!("PWR={}", p.code())), Ok(p));
        let _ = (p.describe(), p.is_transitional());
    }
    if let Ok(h) = parse_lamp_hours(line) {
        assert_eq!(parse_lamp_hours(&format!("LAMP={h}")), Ok(h));
    }
    if let Ok(c) = parse_error_code(line) {
        assert_eq!(parse_error_code(&format!("ERR={c:02X}")), Ok(c));
        if let Some(info) = error_code_info(c) {
            assert_eq!(info.code, c);
        }
    }
    if let Ok(s) = parse_serial(line) {
        assert_eq!(parse_serial(&format!("SNO={s}")), Ok(s));
    }
    if let Ok(s) = parse_source(line) {
        assert_eq!(parse_source(&format!("SOURCE={s}")), Ok(s.clone()));
        assert_eq!(Request::source(&s), Ok(Request::SourceSet(s)));
    }
    if let Ok(m) = parse_mute(line) {
        let word = if m { "ON" } else { "OFF" };
        assert_eq!(parse_mute(&format!("MUTE={word}")), Ok(m));
    }
}
