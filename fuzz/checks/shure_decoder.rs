//! Shure command strings: arbitrary bytes, in arbitrary chunks, through `ShureCodec`, and every
//! message through the value parsers and each family's SAMPLE layout.
//!
//! Checks, beyond "no panic": the buffer never holds a whole frame's limit after the decoder
//! has had its say, and every message the decoder produced survives encode → decode unchanged
//! (what the simulator sends is what the driver reads).

use avwarden::codec::shure::{
    battery_bars, count16, known_word, number, parse_frame, parse_sample, percent, runtime, text,
    Message, SampleField, ShureCodec, MAX_FRAME,
};
use avwarden::codec::ProtocolError;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// SAMPLE layouts of the shipped profiles (protocols.md §2.3): ULX-D/QLX-D, SLX-D, Axient.
const LAYOUTS: [&[SampleField]; 3] = [
    &[SampleField::Antenna, SampleField::Rf, SampleField::Audio],
    &[
        SampleField::Rf,
        SampleField::AudioPeak,
        SampleField::AudioRms,
    ],
    &[
        SampleField::Skip,
        SampleField::Skip,
        SampleField::Rssi,
        SampleField::Rssi,
        SampleField::AudioPeak,
        SampleField::AudioRms,
    ],
];

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    let mut codec = ShureCodec::new();
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => {
                    check_round_trip(&m);
                    check_values(&m);
                }
                Ok(None) => break,
                Err(ProtocolError::Oversized { .. } | ProtocolError::Garbage { .. }) => {}
                // A complete frame that does not parse is consumed and reported.
                Err(ProtocolError::Malformed { .. }) => {}
                Err(e) => panic!("shure codec returned {e}"),
            }
        }
        assert!(buf.len() < MAX_FRAME, "buffer holds {} bytes", buf.len());
    }
    // The bytes as one frame's inside, too. No round trip here: the decoder never hands
    // `parse_frame` an unbraced `<` or `>`, arbitrary bytes can.
    if let Ok(m) = parse_frame(rest) {
        check_values(&m);
    }
}

/// A message the decoder produced is one the simulator can send: encode → decode is identity.
fn check_round_trip(m: &Message) {
    let wire = m.encode();
    let mut codec = ShureCodec::new();
    let mut buf = BytesMut::from(&wire[..]);
    match codec.decode(&mut buf) {
        Ok(Some(again)) => assert_eq!(&again, m, "wire {:?}", String::from_utf8_lossy(&wire)),
        other => panic!(
            "re-encoded {m:?} ({:?}) decoded as {other:?}",
            String::from_utf8_lossy(&wire)
        ),
    }
}

fn check_values(m: &Message) {
    match m {
        Message::Rep { value, .. } | Message::Set { value, .. } => {
            let _ = text(value);
            let _ = known_word(value);
            let _ = number(value);
            let _ = battery_bars(value);
            let _ = percent(value);
            let _ = count16(value);
            if let Ok(r) = runtime(value) {
                assert_eq!(runtime(&r.encode()), Ok(r));
            }
        }
        Message::Sample { fields, .. } => {
            for layout in LAYOUTS {
                if let Ok(meters) = parse_sample(fields, layout, -128.0, -50.0) {
                    for v in [meters.rf_dbm, meters.audio_dbfs, meters.audio_rms_dbfs]
                        .into_iter()
                        .flatten()
                    {
                        assert!(v.is_finite());
                    }
                }
            }
        }
        Message::Get { .. } | Message::Err => {}
    }
}
