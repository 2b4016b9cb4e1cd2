//! PJLink: arbitrary bytes, in arbitrary chunks, through the line decoder (both the controller's
//! and the projector's limits), and every line through every parse fn.
//!
//! Checks, beyond "no panic": the decoder never holds more than its limit of an unterminated
//! line, a line never contains a terminator or exceeds the limit, and every typed value that
//! parses survives encode → parse unchanged.

use avwarden::codec::pjlink::{
    encode_datagram, encode_lamps, encode_response, parse_class, parse_datagram, parse_hours,
    parse_input_list, parse_lamps, parse_models, parse_mute_param, parse_reply, parse_request,
    parse_text, AvMute, ErrorCode, ErrorStatus, InputCode, LineDecoder, PowerStatus, Reply,
    Resolution,
};
use avwarden::codec::ProtocolError;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks the chunk size, so the fuzzer explores reads split anywhere.
    let step = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    for mut decoder in [LineDecoder::replies(), LineDecoder::requests()] {
        let max = decoder.max();
        let mut buf = BytesMut::new();
        for chunk in rest.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(line)) => {
                        assert!(line.len() <= max, "line of {} > {max}", line.len());
                        assert!(!line.iter().any(|&b| b == b'\r' || b == b'\n'));
                        check_line(&line);
                    }
                    Ok(None) => break,
                    Err(ProtocolError::Oversized { .. }) => {}
                    Err(e) => panic!("line decoder returned {e}"),
                }
            }
            assert!(buf.len() <= max, "buffer holds {} > {max}", buf.len());
        }
        if let Ok(Some(line)) = decoder.decode_eof(&mut buf) {
            assert!(line.len() <= max);
            check_line(&line);
        }
    }
    // A datagram is one read, not a stream.
    check_datagram(rest);
}

fn check_line(line: &[u8]) {
    if let Ok(Reply::Response(r)) = parse_reply(line) {
        // What the simulator would send back for this reply parses to the same reply.
        let wire = encode_response(r.class, r.command, &r.param);
        match parse_reply(&wire[..wire.len() - 1]) {
            Ok(Reply::Response(again)) => assert_eq!(again, r),
            other => panic!("re-encoded {r:?} parsed as {other:?}"),
        }
        let _ = r.outcome();
        check_param(&r.param);
    }
    if let Ok(req) = parse_request(line) {
        let _ = req.is_query();
        check_param(&req.param);
    }
    check_param(&String::from_utf8_lossy(line));
}

fn check_param(p: &str) {
    let _ = PowerStatus::parse(p);
    let _ = ErrorCode::parse(p);
    let _ = parse_class(p);
    let _ = parse_hours(p);
    let _ = parse_models(p);
    let _ = parse_text(p);
    let _ = parse_mute_param(p);
    if let Ok(e) = ErrorStatus::parse(p) {
        assert_eq!(ErrorStatus::parse(&e.encode()), Ok(e));
    }
    if let Ok(lamps) = parse_lamps(p) {
        assert_eq!(parse_lamps(&encode_lamps(&lamps)), Ok(lamps));
    }
    if let Ok(inputs) = parse_input_list(p) {
        for i in inputs {
            assert_eq!(InputCode::parse(&i.to_string()), Ok(i));
        }
    }
    if let Ok(m) = AvMute::parse(p) {
        assert_eq!(AvMute::parse(m.encode()), Ok(m));
    }
    if let Ok(r) = Resolution::parse(p) {
        assert_eq!(Resolution::parse(&r.encode()), Ok(r));
    }
}

fn check_datagram(d: &[u8]) {
    if let Ok(n) = parse_datagram(d) {
        assert_eq!(parse_datagram(&encode_datagram(&n)), Ok(n));
    }
}
