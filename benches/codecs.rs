//! Decode throughput of the wire codecs, in bytes/s and frames/s: PJLink poll replies, Shure
//! REP and SAMPLE streams, Sennheiser SSC JSON datagrams.
//!
//! Each input is what a driver really receives (one poll's replies, a receiver's full-state
//! REPs, a quad receiver's metering), decoded and parsed the way the driver does it, so the
//! figure is the codec cost per frame on the daemon's hot path. Results and how to run:
//! `docs/benchmarks.md`.
//!
//! A new codec adds one function here that builds its stream and calls `bench_stream`.

use std::time::Duration;

use avwarden::codec::pjlink::{self, LineDecoder, Reply};
use avwarden::codec::shure::{self, Message, SampleField, ShureCodec};
use avwarden::codec::ssc;
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::codec::Decoder;

/// Copies of a frame set per iteration, so one iteration is a realistic read burst.
const REPEAT: usize = 64;

/// Run `decode` over `stream` twice: once reported as bytes/s, once as frames/s.
/// `decode` returns how many frames it decoded, checked against `frames` so a codec that
/// silently stops decoding cannot produce a flattering figure.
fn bench_stream(
    c: &mut Criterion,
    name: &str,
    stream: &[u8],
    frames: usize,
    decode: impl Fn(&[u8]) -> usize,
) {
    assert_eq!(decode(stream), frames, "{name}: decoded frame count");
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("bytes", |b| b.iter(|| decode(black_box(stream))));
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function("frames", |b| b.iter(|| decode(black_box(stream))));
    g.finish();
}

/// One class 2 poll as the driver sees it (protocols.md §1.4, §1.5).
const PJLINK_POLL: &[&[u8]] = &[
    b"%1POWR=1\r",
    b"%1ERST=000000\r",
    b"%1LAMP=12345 1 678 0\r",
    b"%1INPT=31\r",
    b"%1AVMT=30\r",
    b"%2FILT=1200\r",
    b"%2IRES=1920x1080\r",
];

fn pjlink_replies(c: &mut Criterion) {
    let stream: Vec<u8> = PJLINK_POLL.concat().repeat(REPEAT);
    bench_stream(
        c,
        "pjlink_replies",
        &stream,
        PJLINK_POLL.len() * REPEAT,
        |bytes| {
            let mut d = LineDecoder::replies();
            let mut buf = BytesMut::from(bytes);
            let mut n = 0;
            while let Ok(Some(line)) = d.decode(&mut buf) {
                let Ok(Reply::Response(r)) = pjlink::parse_reply(&line) else {
                    continue;
                };
                let p = r.param.as_str();
                let ok = match r.command {
                    pjlink::Command::POWR => pjlink::PowerStatus::parse(p).is_ok(),
                    pjlink::Command::ERST => pjlink::ErrorStatus::parse(p).is_ok(),
                    pjlink::Command::LAMP => pjlink::parse_lamps(p).is_ok(),
                    pjlink::Command::INPT => pjlink::InputCode::parse(p).is_ok(),
                    pjlink::Command::AVMT => pjlink::AvMute::parse(p).is_ok(),
                    pjlink::Command::FILT => pjlink::parse_hours(p).is_ok(),
                    pjlink::Command::IRES => pjlink::Resolution::parse(p).is_ok(),
                    _ => false,
                };
                n += usize::from(ok);
            }
            n
        },
    );
}

/// A dual receiver's full-state answers (protocols.md §2.3), braces and padding included.
fn shure_rep_frames() -> Vec<String> {
    let mut v = vec![
        "< REP MODEL {ULXD4D                          } >".to_owned(),
        "< REP FW_VER {2.4.11.0          } >".to_owned(),
        "< REP DEVICE_ID {RACK-A                   } >".to_owned(),
    ];
    for ch in 1..=2 {
        for (p, val) in [
            ("CHAN_NAME", "{Lead Vox                       }"),
            ("FREQUENCY", "0578350"),
            ("TX_TYPE", "ULXD2"),
            ("BATT_BARS", "004"),
            ("BATT_RUN_TIME", "00125"),
            ("BATT_CHARGE", "080"),
            ("BATT_TYPE", "LION"),
            ("BATT_CYCLE", "00012"),
            ("TX_MUTE_STATUS", "OFF"),
            ("AUDIO_GAIN", "030"),
            ("AUDIO_MUTE", "OFF"),
            ("RF_INT_DET", "NONE"),
            ("ENCRYPTION_WARNING", "OFF"),
        ] {
            v.push(format!("< REP {ch} {p} {val} >"));
        }
    }
    v
}

fn shure_rep(c: &mut Criterion) {
    let frames = shure_rep_frames();
    let stream = frames.concat().repeat(REPEAT).into_bytes();
    bench_stream(c, "shure_rep", &stream, frames.len() * REPEAT, |bytes| {
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut n = 0;
        while let Ok(Some(m)) = codec.decode(&mut buf) {
            if let Message::Rep { param, value, .. } = m {
                // What the driver does with each value: numbers, sentinels or padded text.
                let ok = match param.as_str() {
                    "BATT_BARS" => shure::battery_bars(&value).is_ok(),
                    "BATT_RUN_TIME" => shure::runtime(&value).is_ok(),
                    "BATT_CHARGE" => shure::percent(&value).is_ok(),
                    "BATT_CYCLE" => shure::count16(&value).is_ok(),
                    "AUDIO_GAIN" | "FREQUENCY" => shure::number(&value).is_ok(),
                    _ => !shure::text(&value).is_empty(),
                };
                n += usize::from(ok);
            }
        }
        n
    });
}

fn shure_sample(c: &mut Criterion) {
    // A quad ULX-D receiver at one metering tick: one SAMPLE per channel (protocols.md §2.3).
    let tick: String = (1..=4)
        .map(|ch| format!("< SAMPLE {ch} ALL AX 098 0{} >", 30 + ch))
        .collect();
    let stream = tick.repeat(REPEAT).into_bytes();
    let layout = [SampleField::Antenna, SampleField::Rf, SampleField::Audio];
    bench_stream(c, "shure_sample", &stream, 4 * REPEAT, |bytes| {
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut n = 0;
        while let Ok(Some(m)) = codec.decode(&mut buf) {
            if let Message::Sample { fields, .. } = m {
                n += usize::from(shure::parse_sample(&fields, &layout, -128.0, -50.0).is_ok());
            }
        }
        n
    });
}

/// SSC datagrams an EW-DX EM 2 sends (protocols.md §3): a poll answer for both channels, a
/// meter notification and an error reply.
fn ssc_datagrams() -> Vec<Vec<u8>> {
    let mut poll = ssc::Builder::new();
    for n in 1..=2u8 {
        poll = poll
            .value(&ssc::address("/mates/tx{n}/battery/gauge", n), 65.into())
            .value(
                &ssc::address("/mates/tx{n}/battery/lifetime", n),
                215.into(),
            )
            .value(
                &ssc::address("/mates/tx{n}/warnings", n),
                serde_json::json!(["LowBattery"]),
            )
            .value(&ssc::address("/mates/tx{n}/mute", n), false.into())
            .value(&ssc::address("/rx{n}/name", n), "Lead Vox".into())
            .value(&ssc::address("/rx{n}/gain", n), 12.into());
    }
    let meters = ssc::Builder::new()
        .value("/m/rx1/rssi", (-62).into())
        .value("/m/rx1/af", (-23).into())
        .value("/m/rx2/rssi", (-70).into())
        .value("/m/rx2/af", (-41).into());
    vec![
        poll.xid(7.into()).encode(),
        meters.encode(),
        ssc::Builder::new()
            .error("/mates/tx2/warnings", 424, Some("failed dependency"))
            .encode(),
    ]
}

fn ssc_json(c: &mut Criterion) {
    let one = ssc_datagrams();
    let datagrams: Vec<Vec<u8>> = (0..REPEAT).flat_map(|_| one.iter().cloned()).collect();
    let bytes: Vec<u8> = datagrams.concat();
    let count = datagrams.len();
    // Datagrams are separate reads; `bench_stream` hands over the concatenation only to size
    // the byte throughput, and the closure parses the datagrams one by one.
    bench_stream(c, "ssc_json", &bytes, count, |_| {
        datagrams
            .iter()
            .filter(|d| {
                ssc::parse(black_box(d)).is_ok_and(|m| !m.values.is_empty() || !m.errors.is_empty())
            })
            .count()
    });
}

criterion_group!(codecs, pjlink_replies, shure_rep, shure_sample, ssc_json);
criterion_main!(codecs);
