//! Where a device's configured link becomes the [`Link`] its driver talks through: the one
//! place that joins `transport` (which opens connections) and `driver` (which must not know
//! the transport).
//!
//! This module owns turning a `LinkSpec` into an opener and the link's facts. It must not
//! know any protocol beyond the line facts a driver needs (a serial line's inter-frame gap).

use crate::codec::modbus::silent_interval;
use crate::driver::{Connection, Link, LinkError, LinkFacts};
use crate::transport::{self, LinkSpec, TransportError};

/// The link a device's actor hands its driver: opened (and reopened) by `transport::open`.
pub fn for_spec(spec: &LinkSpec) -> Link {
    let spec = spec.clone();
    let facts = facts(&spec);
    Link::new(
        facts,
        Box::new(move || {
            let spec = spec.clone();
            Box::pin(async move { transport::open(&spec).await.map(connection).map_err(error) })
        }),
    )
}

/// What a driver must honour of `spec` without knowing the medium.
pub fn facts(spec: &LinkSpec) -> LinkFacts {
    match spec {
        LinkSpec::Serial(s) => LinkFacts {
            // The t3.5 silence of a serial line at its baud rate (protocols.md 5.1).
            frame_gap: silent_interval(s.baud),
            per_exchange: false,
        },
        LinkSpec::Tcp(t) => LinkFacts {
            frame_gap: std::time::Duration::ZERO,
            per_exchange: t.connect_per_command,
        },
        LinkSpec::Udp { .. } | LinkSpec::Mqtt { .. } => LinkFacts::default(),
    }
}

fn connection(c: transport::Connection) -> Connection {
    match c {
        transport::Connection::Stream(s) => Connection::Stream(Box::new(s)),
        transport::Connection::Datagram(sock) => Connection::Datagram(sock),
        transport::Connection::Topic { topic } => Connection::Topic { topic },
    }
}

/// A transport failure in the driver layer's terms, its wording kept.
pub fn error(e: TransportError) -> LinkError {
    match e {
        TransportError::Closed => LinkError::Closed,
        TransportError::Io(e) => LinkError::Io(e),
        other => LinkError::Open(other.to_string()),
    }
}
