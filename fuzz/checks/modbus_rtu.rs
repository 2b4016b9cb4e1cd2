//! Modbus RTU: arbitrary bytes, in arbitrary chunks, through the request decoder (the
//! simulator's side) and the response decoder (the driver's side), the input as one captured
//! reply through `diagnose_reply`, the same again with the input cut into pieces that each get
//! a correct CRC (so the PDU parsers are reached, not only the CRC check), and every register a
//! response carries through the shipped register maps.
//!
//! Checks, beyond "no panic": the decoders never hold a whole ADU's limit of undecided bytes,
//! every frame they accept has a correct CRC and survives encode → decode unchanged, the
//! diagnosis of a reply agrees with the response decoder and names an error exactly when the
//! bytes are not silence and not a valid frame, and map values that decode survive
//! encode → decode.

use std::sync::OnceLock;

use avwarden::codec::modbus::{
    append_crc, crc_ok, diagnose_reply, hex_preview, scan_request, scan_response, ReplyDiagnosis,
    Request, RequestDecoder, Response, ResponseDecoder, ResponsePdu, Scan, MAX_ADU,
};
use avwarden::codec::modbus_map::{Point, RegisterMap};
use avwarden::codec::ProtocolError;
use avwarden::profile::{DriverKind, ProfileSet};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The register maps of every shipped Modbus profile.
fn maps() -> &'static [RegisterMap] {
    static MAPS: OnceLock<Vec<RegisterMap>> = OnceLock::new();
    MAPS.get_or_init(|| {
        let set = ProfileSet::embedded().expect("embedded profiles load");
        let maps: Vec<RegisterMap> = set
            .iter()
            .filter(|p| p.driver == DriverKind::Modbus)
            .map(|p| RegisterMap::from_table(&p.options).expect("shipped map is valid"))
            .collect();
        assert!(!maps.is_empty());
        maps
    })
}

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    // Loaded on the first input, so every run counts the same profile-loading edges.
    let _ = maps();
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    decode_stream(rest, step);
    check_diagnosis(rest);
    if let Scan::Frame { len, frame } = scan_request(rest) {
        assert!(crc_ok(&rest[..len]));
        check_request(&frame);
    }
    // A random CRC is right once in 65 536 tries; so that the fuzzer reaches the PDU parsers
    // too, the input is also read as `[len][len bytes]…`, each piece sent with its CRC.
    let mut framed = Vec::new();
    let mut pieces = rest;
    while let Some((&len, tail)) = pieces.split_first() {
        let (body, more) = tail.split_at(usize::from(len).min(tail.len()));
        let mut adu = body.to_vec();
        append_crc(&mut adu);
        check_diagnosis(&adu);
        framed.extend(adu);
        pieces = more;
    }
    decode_stream(&framed, step);
}

/// Both directions' decoders over a byte stream that arrives `step` bytes at a time.
fn decode_stream(bytes: &[u8], step: usize) {
    let mut requests = BytesMut::new();
    let mut responses = BytesMut::new();
    for chunk in bytes.chunks(step) {
        requests.extend_from_slice(chunk);
        responses.extend_from_slice(chunk);
        loop {
            match RequestDecoder.decode(&mut requests) {
                Ok(Some(r)) => check_request(&r),
                Ok(None) => break,
                Err(ProtocolError::Malformed { .. }) => {}
                Err(e) => panic!("request decoder returned {e}"),
            }
        }
        assert!(
            requests.len() < MAX_ADU,
            "request buffer holds {}",
            requests.len()
        );
        loop {
            match ResponseDecoder.decode(&mut responses) {
                Ok(Some(r)) => check_response(&r),
                Ok(None) => break,
                Err(ProtocolError::Malformed { .. }) => {}
                Err(e) => panic!("response decoder returned {e}"),
            }
        }
        assert!(
            responses.len() < MAX_ADU,
            "response buffer holds {}",
            responses.len()
        );
    }
    loop {
        match ResponseDecoder.decode_eof(&mut responses) {
            Ok(Some(r)) => check_response(&r),
            Ok(None) => break,
            Err(ProtocolError::Malformed { .. }) => {}
            Err(e) => panic!("response decoder at eof returned {e}"),
        }
    }
    assert!(responses.is_empty(), "eof left {} bytes", responses.len());
}

fn check_request(r: &Request) {
    let wire = r.encode();
    assert!(wire.len() <= MAX_ADU && crc_ok(&wire));
    match scan_request(&wire) {
        Scan::Frame { len, frame } => {
            assert_eq!(len, wire.len());
            assert_eq!(&frame, r, "wire {}", hex_preview(&wire));
        }
        other => panic!(
            "{r:?} re-encoded as {} scans as {other:?}",
            hex_preview(&wire)
        ),
    }
}

fn check_response(r: &Response) {
    let wire = r.encode();
    assert!(wire.len() <= MAX_ADU && crc_ok(&wire));
    match scan_response(&wire) {
        Scan::Frame { len, frame } => {
            assert_eq!(len, wire.len());
            assert_eq!(&frame, r, "wire {}", hex_preview(&wire));
        }
        other => panic!(
            "{r:?} re-encoded as {} scans as {other:?}",
            hex_preview(&wire)
        ),
    }
    if let ResponsePdu::Registers { values, .. } = &r.pdu {
        for map in maps() {
            for (name, point) in map.all_points() {
                let _ = (map.read_address(point), map.write_address(point));
                for &raw in values {
                    check_point(name, point, raw);
                }
            }
        }
    }
}

fn check_point(name: &'static str, p: &Point, raw: u16) {
    let _ = p.decode_bits(raw);
    if let Some(v) = p.decode_number(raw) {
        assert!(v.is_finite());
        if p.write_or == 0 && p.min.is_none_or(|m| v >= m) && p.max.is_none_or(|m| v <= m) {
            assert_eq!(p.encode_number(name, v), Ok(raw), "{name} {v}");
        }
    }
    if let Some(label) = p.decode_enum(raw) {
        let label = label.to_owned();
        let encoded = p
            .encode_enum(name, &label)
            .unwrap_or_else(|e| panic!("{name} {label}: {e}"));
        if p.write_or == 0 {
            assert_eq!(p.decode_enum(encoded), Some(label.as_str()));
        }
    }
}

/// The driver's account of one captured reply.
fn check_diagnosis(bytes: &[u8]) {
    let d = diagnose_reply(bytes);
    let err = d.to_error(bytes);
    match &d {
        ReplyDiagnosis::Silence => assert!(bytes.is_empty()),
        ReplyDiagnosis::Valid(r) => {
            // Re-encoding keeps the length (a coil echo may change its value bytes).
            let len = r.encode().len();
            assert!(len <= bytes.len() && crc_ok(&bytes[..len]));
            check_response(r);
        }
        ReplyDiagnosis::Truncated { have, need } => {
            assert_eq!(*have, bytes.len());
            if let Some(n) = need {
                assert!(*n > *have && *n <= MAX_ADU);
            }
        }
        ReplyDiagnosis::BadCrc { len } => {
            assert!(*len <= bytes.len() && !crc_ok(&bytes[..*len]));
        }
        ReplyDiagnosis::Garbage { detail } => assert!(!detail.is_empty()),
    }
    let quiet = matches!(d, ReplyDiagnosis::Silence | ReplyDiagnosis::Valid(_));
    assert_eq!(err.is_none(), quiet, "{d:?} → {err:?}");
}
